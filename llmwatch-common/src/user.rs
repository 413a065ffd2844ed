//! `aya::Pod` for the types userspace reads from or writes to maps and globals.
use crate::{event::FileId, maps::*, offsets::Offsets};

// SAFETY: all are #[repr(C)], Copy, contain only integers and byte arrays, and have explicit
// padding fields, so every bit pattern is valid.
unsafe impl aya::Pod for FileId {}
unsafe impl aya::Pod for WatchedFile {}
unsafe impl aya::Pod for FdKey {}
unsafe impl aya::Pod for ProcFileKey {}
unsafe impl aya::Pod for UringKey {}
unsafe impl aya::Pod for TouchStats {}
unsafe impl aya::Pod for TrackedFd {}
unsafe impl aya::Pod for SendKey {}
unsafe impl aya::Pod for SendStats {}
unsafe impl aya::Pod for Settings {}
unsafe impl aya::Pod for Offsets {}
unsafe impl aya::Pod for crate::guard::GuardSettings {}
unsafe impl aya::Pod for crate::guard::GuardTree {}
unsafe impl aya::Pod for crate::guard::NetKey {}
unsafe impl aya::Pod for crate::guard::PortNetKey {}

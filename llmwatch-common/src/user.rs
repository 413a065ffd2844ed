//! `aya::Pod` for the types userspace reads from or writes to maps and globals.
use crate::{event::FileId, maps::*, offsets::Offsets};

// All are #[repr(C)], Copy, contain only integers and byte arrays, and have explicit padding
// fields, so every bit pattern is valid: what aya::Pod asks.
// SAFETY: FileId is #[repr(C)] integers and byte arrays with explicit padding (above).
unsafe impl aya::Pod for FileId {}
// SAFETY: WatchedFile is #[repr(C)] integers and byte arrays with explicit padding (above).
unsafe impl aya::Pod for WatchedFile {}
// SAFETY: FdKey is #[repr(C)] integers and byte arrays with explicit padding (above).
unsafe impl aya::Pod for FdKey {}
// SAFETY: ProcFileKey is #[repr(C)] integers and byte arrays with explicit padding (above).
unsafe impl aya::Pod for ProcFileKey {}
// SAFETY: UringKey is #[repr(C)] integers and byte arrays with explicit padding (above).
unsafe impl aya::Pod for UringKey {}
// SAFETY: TouchStats is #[repr(C)] integers and byte arrays with explicit padding (above).
unsafe impl aya::Pod for TouchStats {}
// SAFETY: TrackedFd is #[repr(C)] integers and byte arrays with explicit padding (above).
unsafe impl aya::Pod for TrackedFd {}
// SAFETY: SendKey is #[repr(C)] integers and byte arrays with explicit padding (above).
unsafe impl aya::Pod for SendKey {}
// SAFETY: SendStats is #[repr(C)] integers and byte arrays with explicit padding (above).
unsafe impl aya::Pod for SendStats {}
// SAFETY: Settings is #[repr(C)] integers and byte arrays with explicit padding (above).
unsafe impl aya::Pod for Settings {}
// SAFETY: Offsets is #[repr(C)] integers and byte arrays with explicit padding (above).
unsafe impl aya::Pod for Offsets {}
// SAFETY: GuardSettings is #[repr(C)] integers and byte arrays with no implicit padding (above).
unsafe impl aya::Pod for crate::guard::GuardSettings {}
// SAFETY: GuardTree is #[repr(C)] integers and byte arrays with no implicit padding (above).
unsafe impl aya::Pod for crate::guard::GuardTree {}
// SAFETY: NetKey is #[repr(C)] integers and byte arrays with no implicit padding (above).
unsafe impl aya::Pod for crate::guard::NetKey {}
// SAFETY: PortNetKey is #[repr(C)] integers and byte arrays with no implicit padding (above).
unsafe impl aya::Pod for crate::guard::PortNetKey {}

//! Types shared by the kernel programs (`llmwatch-ebpf`) and the agent (`llmwatch`).
//!
//! Everything here is `#[repr(C)]`, fixed-size and free of pointers so both sides agree on the
//! layout byte for byte. With the `user` feature the types implement `aya::Pod`.
#![no_std]

pub mod event;
pub mod guard;
pub mod maps;
pub mod offsets;
pub mod syscalls;

#[cfg(feature = "user")]
mod user;

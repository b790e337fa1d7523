//! The only place that touches another process: /proc and (later) its memory. Everything above
//! works on bytes and the `Memory` abstraction, so it can be tested on recordings.

pub mod freeze;
pub mod maps;
pub mod memory;
pub mod process;

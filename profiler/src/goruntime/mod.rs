//! Decoding the Go runtime's structures in a live process through `remote::memory::Memory`:
//! goroutines, sudogs, channels, the semaphore table. Layouts come from `gobin` offsets.

pub mod globals;
pub mod goroutines;
pub mod heap;
pub mod layout;
pub mod objects;
pub mod snapshot;
pub mod stack;
pub mod states;

//! Decoding the Go runtime's structures in a live process through `remote::memory::Memory`:
//! goroutines, sudogs, channels, the semaphore table. Layouts come from `gobin` offsets.

pub mod cond;
pub mod globals;
pub mod goroutines;
pub mod heap;
pub mod layout;
pub mod objects;
pub mod roots;
pub mod snapshot;
pub mod specials;
pub mod stack;
pub mod stackscan;
pub mod states;
pub mod sudogs;
pub mod threads;

//! parkscope: finds leaked goroutines, deadlocks and lock contention in live Go programs.
//!
//! Data flows one way: target discovery (`remote`) → Go binary facts (`gobin`) → probes and
//! memory → model → analysis → outputs. Each module owns one of those rooms.

pub mod analysis;
pub mod daemon;
pub mod error;
pub mod gobin;
pub mod goruntime;
pub mod model;
pub mod output;
pub mod probes;
pub mod remote;

#[cfg(test)]
pub mod testbins;

//! Analysis over what the memory reader saw: reachability (the leak proof) and verdicts.

pub mod contention;
pub mod deadlocks;
pub mod holders;
pub mod leaks;

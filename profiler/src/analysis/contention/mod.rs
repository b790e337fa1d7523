//! Contention: how long goroutines waited, where, on what, and who made them wait. Two sources,
//! one vocabulary (the model's `WaitKind` and sites): the probes' event stream, accounted wait by
//! wait (`accountant`), and samples of the goroutine table read from memory, from which the
//! same quantities are estimated without a probe in the target (`sampled`).

pub mod accountant;
pub mod histogram;
pub mod report;

pub use accountant::{Accountant, Charge, Gap, SiteStats, Wait, waker_site};
pub use histogram::{HistSummary, Histogram};
pub use report::{Peer, Report, Row};

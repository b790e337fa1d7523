//! Live events from eBPF uprobes on the Go runtime: loading and attaching the programs
//! (`loader`), which program goes where (`groups`), the per-hit cost floor (`calibrate`), the
//! overhead budget (`governor`), decoding (`decode`), the model's contention observations
//! (`observe`) and the `trace` session loop (`session`).

pub mod calibrate;
pub mod decode;
pub mod governor;
pub mod groups;
pub mod loader;
pub mod observe;
pub mod session;

pub use groups::{ProbeGroup, parse_groups};
pub use session::{EndReason, Output, Summary, TraceOptions};

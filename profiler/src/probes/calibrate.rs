//! What one uprobe hit costs on this machine, measured at startup: an empty eBPF program is
//! attached to two tiny functions of our own process, one starting with `push %rbp` (the kernel
//! emulates it: the cost of our usual attach point) and one starting with `cmp` (single-stepped:
//! the cost of RET probes and of entry probes where the prologue pattern was not found). Each is
//! called in a loop with and without the probe; the difference per call is the floor the
//! governor adds to each program's own run time.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use aya::programs::UProbe;
use aya::programs::uprobe::UProbeScope;
use serde::Serialize;

use crate::gobin::probe_points::AttachKindName;

/// Used when calibration is impossible (e.g. our binary has no symbol table): design.md's
/// measurements on the development VM.
pub const DEFAULT_EMULATED_NS: f64 = 1100.0;
pub const DEFAULT_STEPPED_NS: f64 = 8300.0;

std::arch::global_asm!(
    ".globl parkscope_calib_push",
    ".type parkscope_calib_push,@function",
    "parkscope_calib_push:",
    "push rbp",
    "mov rbp, rsp",
    "pop rbp",
    "ret",
    ".size parkscope_calib_push, .-parkscope_calib_push",
    ".globl parkscope_calib_step",
    ".type parkscope_calib_step,@function",
    "parkscope_calib_step:",
    "cmp rax, rcx",
    "ret",
    ".size parkscope_calib_step, .-parkscope_calib_step",
);

unsafe extern "C" {
    fn parkscope_calib_push();
    fn parkscope_calib_step();
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct HitCost {
    /// ns per hit on an emulated `push %rbp` attach point.
    pub emulated_ns: f64,
    /// ns per hit on a single-stepped instruction.
    pub stepped_ns: f64,
    /// "measured" or "default".
    pub source: &'static str,
}

impl Default for HitCost {
    fn default() -> Self {
        HitCost {
            emulated_ns: DEFAULT_EMULATED_NS,
            stepped_ns: DEFAULT_STEPPED_NS,
            source: "default",
        }
    }
}

impl HitCost {
    pub fn for_kind(&self, kind: AttachKindName) -> f64 {
        match kind {
            AttachKindName::AfterStackCheck
            | AttachKindName::PushAtEntry
            | AttachKindName::EmulatedCall => self.emulated_ns,
            AttachKindName::Entry => self.stepped_ns,
        }
    }
}

fn time_calls(f: unsafe extern "C" fn(), calls: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..calls {
        // SAFETY: the functions only push/pop rbp or compare registers, then return.
        unsafe { std::hint::black_box(f)() };
    }
    start.elapsed()
}

/// ns per probe hit on `symbol` (median of 3 rounds), or None when the probe cannot be
/// attached (no symbol table, no privileges).
fn measure(
    program: &mut UProbe,
    symbol: &str,
    f: unsafe extern "C" fn(),
    calls: u32,
) -> Option<f64> {
    let pid = NonZeroU32::new(std::process::id())?;
    let mut samples = Vec::new();
    for _ in 0..3 {
        let base = time_calls(f, calls);
        let link = program
            .attach([symbol], "/proc/self/exe", UProbeScope::OneProcess(pid))
            .map_err(|e| tracing::info!("calibration: attaching to {symbol}: {e}"))
            .ok()?;
        let probed = time_calls(f, calls);
        let _ = program.detach(link);
        let delta = probed.as_nanos() as f64 - base.as_nanos() as f64;
        samples.push((delta / f64::from(calls)).max(0.0));
    }
    samples.sort_by(f64::total_cmp);
    Some(samples[1])
}

/// Measure both floors with `program` (an already-loaded empty uprobe program).
pub fn measure_hit_cost(program: &mut UProbe) -> HitCost {
    let emulated = measure(
        program,
        "parkscope_calib_push",
        parkscope_calib_push,
        20_000,
    );
    let stepped = measure(program, "parkscope_calib_step", parkscope_calib_step, 5_000);
    match (emulated, stepped) {
        (Some(emulated_ns), Some(stepped_ns)) if emulated_ns > 0.0 && stepped_ns > 0.0 => HitCost {
            emulated_ns,
            stepped_ns,
            source: "measured",
        },
        _ => HitCost::default(),
    }
}

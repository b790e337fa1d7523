#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{macros::map, macros::uprobe, maps::PerCpuArray, programs::ProbeContext};
    use profiler_common::probe_slot;

    /// Hits per attach-point kind, per CPU. Userspace sums them to price each probe group.
    #[map]
    static PROBE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(probe_slot::COUNT, 0);

    fn count_hit(slot: u32) {
        if let Some(counter) = PROBE_HITS.get_ptr_mut(slot) {
            // Per-CPU slot: no other CPU writes it, and a uprobe cannot preempt itself.
            unsafe { *counter += 1 };
        }
    }

    /// runtime.gopark: counts parks. The full park event (reason, lock, g) arrives with the
    /// event pipeline; this program proves the build, load and attach path end to end.
    #[uprobe]
    pub fn gopark(_ctx: ProbeContext) -> u32 {
        count_hit(probe_slot::GOPARK);
        0
    }

    #[cfg(not(test))]
    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

//! Types that cross the kernel/userspace boundary. Both sides compile this crate, so every type
//! here is `#[repr(C)]`, `Copy`, and free of pointers and padding surprises.
#![no_std]

/// Indices into the per-CPU probe hit counter array. One slot per attach point kind, so the
/// overhead governor can price each probe group from kernel-side counts.
pub mod probe_slot {
    pub const GOPARK: u32 = 0;
    pub const COUNT: u32 = 16;
}

/// Offsets into the Go runtime's structures that the eBPF programs need. Filled in by userspace
/// from `parkscope inspect` facts before the programs are loaded; never hard-coded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoOffsets {
    pub g_goid: u32,
    pub g_atomicstatus: u32,
    pub g_waitreason: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for GoOffsets {}

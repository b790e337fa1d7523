// Empty library target: it lets profiler/build.rs name this crate as a build dependency so cargo
// rebuilds the userspace crate when the eBPF sources change.
#![no_std]

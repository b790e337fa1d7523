//! OWNED BY HELPER (pclntab): being written. Interface agreed in gobin/mod.rs.

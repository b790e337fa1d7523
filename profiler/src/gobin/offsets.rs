//! OWNED BY HELPER (offsets): being written. Interface agreed in gobin/mod.rs.

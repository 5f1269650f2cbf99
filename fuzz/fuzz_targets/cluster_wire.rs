#![no_main]
//! cargo fuzz run cluster_wire -- see docs/hardening.md; body and invariants in src/lib.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast_fuzz::cluster_wire(data));

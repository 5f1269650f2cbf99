#![no_main]
//! cargo fuzz run ws_read -- see docs/hardening.md; body and invariants in src/lib.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast_fuzz::ws_read(data));

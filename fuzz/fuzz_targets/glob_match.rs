#![no_main]
//! cargo fuzz run glob_match -- see docs/hardening.md; body and invariants in src/lib.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast_fuzz::glob_match(data));

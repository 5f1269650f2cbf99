#![no_main]
//! cargo fuzz run upgrade_parse -- see docs/hardening.md; body and invariants in src/lib.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast_fuzz::upgrade_parse(data));

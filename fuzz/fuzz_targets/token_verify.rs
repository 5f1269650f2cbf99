#![no_main]
//! cargo fuzz run token_verify -- see docs/hardening.md; body and invariants in src/lib.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast_fuzz::token_verify(data));

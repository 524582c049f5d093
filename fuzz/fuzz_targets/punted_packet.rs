//! libFuzzer's input to [`gateway_fuzz::packet::punted_packet`], which says what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::packet::punted_packet(data));

//! libFuzzer's input to [`gateway_fuzz::control::control_table`], which says what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::control::control_table(data));

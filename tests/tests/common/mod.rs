//! Helpers shared by the BPF_PROG_TEST_RUN tests.
#![allow(dead_code)]

use aya::programs::{TestRun, TestRunOptions};
use gateway_tests::{frame::FrameSpec, packet::checksum_error};
use gateway_user::dataplane::Dataplane;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;

#[derive(Clone, Copy, Debug)]
pub enum Hook {
    Xdp,
    Tc,
}

/// Runs one frame through one entry point; returns (verdict, frame out).
pub fn run(dataplane: &mut Dataplane, hook: Hook, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 512];
    let options = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    };
    let result = match hook {
        Hook::Xdp => dataplane.xdp().unwrap().test_run(options),
        Hook::Tc => dataplane.tc().unwrap().test_run(options),
    }
    .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

pub fn pass(hook: Hook) -> u32 {
    match hook {
        Hook::Xdp => XDP_PASS,
        Hook::Tc => TC_ACT_OK,
    }
}

/// Asserts the frame comes out exactly as `expected` (built from scratch, so its checksums
/// are the recomputed ones) and is passed on.
pub fn assert_translates(
    dataplane: &mut Dataplane,
    hook: Hook,
    input: &FrameSpec,
    expected: &FrameSpec,
    what: &str,
) {
    let (verdict, out) = run(dataplane, hook, &input.build());
    assert_eq!(verdict, pass(hook), "{hook:?} {what}: verdict");
    assert_eq!(checksum_error(&out), None, "{hook:?} {what}: checksums");
    assert_eq!(out, expected.build(), "{hook:?} {what}: frame");
}

pub fn assert_untouched(dataplane: &mut Dataplane, hook: Hook, frame: &[u8], what: &str) {
    let (verdict, out) = run(dataplane, hook, frame);
    assert_eq!(verdict, pass(hook), "{hook:?} {what}: verdict");
    assert_eq!(out, frame, "{hook:?} {what}: frame must pass unchanged");
}

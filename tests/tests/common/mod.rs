//! Helpers shared by the BPF_PROG_TEST_RUN tests.
#![allow(dead_code)]

use aya::programs::{TestRun, TestRunOptions};
use gateway_tests::{frame::FrameSpec, packet::checksum_error};
use std::net::{Ipv4Addr, SocketAddrV4};

use gateway_tests::{check_environment, dataplane::masquerading};
use gateway_user::{
    config::{Alg, Protocol, Publish},
    dataplane::Dataplane,
};

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
///
/// The programs run in the calling thread's network namespace, whose routes decide what
/// becomes of a translated packet (`forward.rs`): never the host's. A thread still in the
/// host's namespace first moves to a fresh one of its own (it goes with the thread), where
/// forwarding is off, so translated packets are handed to the stack as they are. A test that
/// sets up routes runs its thread in a namespace of its own and is left there.
pub fn run(dataplane: &mut Dataplane, hook: Hook, frame: &[u8]) -> (u32, Vec<u8>) {
    leave_the_host_namespace();
    run_from(dataplane, hook, frame, None)
}

/// As [`run`], in the caller's namespace as it is, with the TC packet arriving on
/// `ingress` (an ifindex); XDP's test runs always arrive on the namespace's loopback.
pub fn run_from(
    dataplane: &mut Dataplane,
    hook: Hook,
    frame: &[u8],
    ingress: Option<u32>,
) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 512];
    // `struct __sk_buff`, zeros but for `ingress_ifindex` (offset 36), which the kernel's
    // test run copies into the skb.
    let mut skb = [0u8; 192];
    if let Some(ingress) = ingress {
        skb[36..40].copy_from_slice(&ingress.to_ne_bytes());
    }
    let options = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: match (hook, ingress) {
            (Hook::Tc, Some(_)) => Some(&skb),
            _ => None,
        },
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

/// The verdict of a dropped frame (and of a punted one: the ring or the tap has it now).
pub fn dropped(hook: Hook) -> u32 {
    match hook {
        Hook::Xdp => XDP_DROP,
        Hook::Tc => TC_ACT_SHOT,
    }
}

/// The fast path's `wanted` counter, summed over the CPUs; a counter the dataplane does not
/// list fails the test (a missing one must never read as 0).
pub fn counter(dataplane: &Dataplane, wanted: gateway_common::Counter) -> u64 {
    dataplane
        .counters()
        .expect("the counters")
        .into_iter()
        .find(|(counter, _)| *counter == wanted)
        .map(|(_, value)| value)
        .unwrap_or_else(|| panic!("counter {wanted:?} is not listed"))
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

/// Moves this thread into a new network namespace of its own if it is still in the one the
/// process started in (the host's), where the main thread stays. See [`run`].
fn leave_the_host_namespace() {
    use std::os::unix::fs::MetadataExt;
    let identity = |path: &str| {
        std::fs::metadata(path)
            .map(|meta| (meta.dev(), meta.ino()))
            .unwrap_or_else(|err| panic!("{path}: {err}"))
    };
    if identity("/proc/thread-self/ns/net") != identity("/proc/self/ns/net") {
        return;
    }
    // SAFETY: CLONE_NEWNET moves only the calling thread; no memory is involved.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        panic!(
            "a network namespace for the test run: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The fast path as the FTP TestRun tests need it: 203.0.113.1:21 published with the ALG
/// (10.0.0.2:21 behind it) and 10.0.0.0/24 masqueraded behind 203.0.113.1, control port 21.
pub fn ftp_dataplane() -> Dataplane {
    check_environment().expect("environment");
    let mut dataplane = Dataplane::load(false, 4096).expect("load");
    dataplane
        .publish(&[Publish {
            public: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 21),
            private: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 21),
            protocol: Protocol::Tcp,
            alg: Some(Alg::Ftp),
            policy: None,
        }])
        .expect("publish");
    masquerading(&mut dataplane, Ipv4Addr::new(203, 0, 113, 1), &[21]);
    dataplane
}

//! Per-packet cost of the fast path, measured by the kernel (BPF_PROG_TEST_RUN) for each hook
//! and case. Prints one `fastpath <hook> <case> <ns>` line per measurement for
//! `cargo xtask bench`, which runs it; needs root.
//!
//! Every timed run's verdict and output frame are checked against what its row claims to
//! time (a translation, a miss passed on untouched, a punt): a run that did something else
//! (a translation that missed, a punt passed on) stops the benchmark instead of becoming a
//! figure.

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::programs::{TestRun, TestRunOptions};
use gateway_tests::{dataplane::masquerading, frame::FrameSpec, packet::checksum_error};
use gateway_user::{
    config::{Protocol, Publish},
    dataplane::Dataplane,
};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// Single runs timed per case; the median is reported. Each run gets a fresh copy of the
/// frame: with BPF_PROG_TEST_RUN's `repeat`, later runs would see the frame the first one
/// already translated, and time a miss.
const SAMPLES: usize = 5000;
/// Distinct new connections timed one by one for the new-flow case.
const NEW_FLOWS: u16 = 4000;

#[derive(Clone, Copy, Debug)]
enum Hook {
    Xdp,
    Tc,
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// What a timed run must have done for its row to mean what it says.
enum Expect<'a> {
    /// Passed on, rewritten into exactly this frame.
    Translated(&'a [u8]),
    /// Passed on with its source masqueraded to the public address (new flows, whose public
    /// port the program picks), checksums right.
    Masqueraded,
    /// Passed on byte for byte (a miss).
    Untouched,
    /// Consumed, unchanged, into the punt ring (the caller checks the record).
    PuntedToRing,
    /// Redirected to the punt tap, with the punt metadata over its Ethernet header.
    PuntedToTap,
}

impl Expect<'_> {
    fn met_by(&self, hook: Hook, verdict: u32, input: &[u8], out: &[u8]) -> bool {
        let (pass, drop, redirect) = match hook {
            Hook::Xdp => (XDP_PASS, XDP_DROP, XDP_REDIRECT),
            Hook::Tc => (TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT),
        };
        match self {
            Expect::Translated(expected) => verdict == pass && out == *expected,
            Expect::Masqueraded => {
                verdict == pass
                    && out.get(26..30) == Some(&PUBLIC.octets()[..])
                    && checksum_error(out).is_none()
            }
            Expect::Untouched => verdict == pass && out == input,
            Expect::PuntedToRing => verdict == drop && out == input,
            Expect::PuntedToTap => {
                verdict == redirect && gateway_common::punt_frame::decode(out).is_some()
            }
        }
    }
}

/// One run of `frame` through `hook`, checked against `expect`; the kernel's time for it, ns.
fn run(dataplane: &mut Dataplane, hook: Hook, frame: &[u8], expect: &Expect, case: &str) -> u64 {
    let mut out = vec![0u8; frame.len() + 256];
    let options = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: 1,
        ..Default::default()
    };
    let result = match hook {
        Hook::Xdp => dataplane.xdp().expect("xdp").test_run(options),
        Hook::Tc => dataplane.tc().expect("tc").test_run(options),
    }
    .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    assert!(
        expect.met_by(hook, result.return_value, frame, &out),
        "{hook:?} {case}: verdict {} and frame {out:02x?} are not what this row times (input {frame:02x?})",
        result.return_value
    );
    result.duration.as_nanos() as u64
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn dataplane() -> Dataplane {
    let mut dataplane = Dataplane::load(false, 1 << 16).expect("load the fast path");
    dataplane
        .publish(&[Publish {
            public: SocketAddrV4::new(PUBLIC, 8021),
            private: SocketAddrV4::new(SERVER, 9000),
            protocol: Protocol::Tcp,
            alg: None,
            policy: None,
        }])
        .expect("publish");
    masquerading(&mut dataplane, PUBLIC, &[]);
    dataplane
}

/// A control connection's packet punted to the ring (the ring is drained between runs, as
/// the agent would).
fn punt_cost() {
    let mut dataplane = Dataplane::load(false, 1 << 16).expect("load the fast path");
    dataplane
        .publish(&[Publish {
            public: SocketAddrV4::new(PUBLIC, 21),
            private: SocketAddrV4::new(SERVER, 21),
            protocol: Protocol::Tcp,
            alg: Some(gateway_user::config::Alg::Ftp),
            policy: None,
        }])
        .expect("publish");
    let mut ring = dataplane.take_punt_ring().expect("ring");
    let frame = FrameSpec::tcp(
        SocketAddrV4::new(REMOTE, 40000),
        SocketAddrV4::new(PUBLIC, 21),
    )
    .build();
    for (hook, name) in [(Hook::Xdp, "xdp"), (Hook::Tc, "tc")] {
        let timings: Vec<u64> = (0..SAMPLES)
            .map(|_| {
                let ns = run(&mut dataplane, hook, &frame, &Expect::PuntedToRing, "punt");
                let mut records = 0;
                while ring.next().is_some() {
                    records += 1;
                }
                assert_eq!(records, 1, "{name} punt: one ring record per run");
                ns
            })
            .collect();
        println!("fastpath {name} punt {}", median(timings));
    }
}

/// The same punt to a tap (the default transport): in a namespace of its own,
/// where the tap lives and the devmap resolves its ifindex. TestRun reports the redirect
/// without carrying it out, so this is the program's side: metadata written, tap looked up.
fn punt_tap_cost() {
    let netns = gateway_tests::netns::Netns::create(&format!(
        "{}-benchtap",
        gateway_tests::netns::unique_prefix()
    ))
    .expect("netns");
    let ifindex = netns.add_tap("gwbench0").expect("tap");
    let median_ns = netns
        .spawn(move || {
            let mut dataplane = Dataplane::load(false, 1 << 16)?;
            dataplane.publish(&[Publish {
                public: SocketAddrV4::new(PUBLIC, 21),
                private: SocketAddrV4::new(SERVER, 21),
                protocol: Protocol::Tcp,
                alg: Some(gateway_user::config::Alg::Ftp),
                policy: None,
            }])?;
            dataplane.set_punt_tap(Some(ifindex))?;
            let frame = FrameSpec::tcp(
                SocketAddrV4::new(REMOTE, 40000),
                SocketAddrV4::new(PUBLIC, 21),
            )
            .build();
            Ok([(Hook::Xdp, "xdp"), (Hook::Tc, "tc")].map(|(hook, name)| {
                let timings: Vec<u64> = (0..SAMPLES)
                    .map(|_| {
                        run(
                            &mut dataplane,
                            hook,
                            &frame,
                            &Expect::PuntedToTap,
                            "punt_tap",
                        )
                    })
                    .collect();
                (name, median(timings))
            }))
        })
        .join()
        .expect("thread")
        .expect("tap punt");
    for (name, median_ns) in median_ns {
        println!("fastpath {name} punt_tap {median_ns}");
    }
}

/// The established-session hit with the table holding `entries` other sessions: the cost
/// must not grow with the table. Also the maps' locked memory at that capacity.
fn scale_cost() {
    const CAPACITY: u32 = 1 << 21;
    let mut dataplane = Dataplane::load(false, CAPACITY).expect("load the fast path");
    masquerading(&mut dataplane, PUBLIC, &[]);
    let outbound = FrameSpec::tcp(
        SocketAddrV4::new(SERVER, 41000),
        SocketAddrV4::new(REMOTE, 80),
    )
    .build();
    // The inside port is free, so the mapping keeps it.
    let translated = FrameSpec::tcp(
        SocketAddrV4::new(PUBLIC, 41000),
        SocketAddrV4::new(REMOTE, 80),
    )
    .build();
    let mut filled = 0u32;
    for entries in [1_000u32, 100_000, 1_000_000] {
        fill_sessions(&mut dataplane, filled, entries);
        filled = entries;
        let case = format!("scale_{entries}");
        for (hook, name) in [(Hook::Xdp, "xdp"), (Hook::Tc, "tc")] {
            let hit = Expect::Translated(&translated);
            run(&mut dataplane, hook, &outbound, &hit, &case);
            let ns = median(
                (0..SAMPLES)
                    .map(|_| run(&mut dataplane, hook, &outbound, &hit, &case))
                    .collect(),
            );
            println!("fastpath {name} {case} {ns}");
        }
    }
    println!("fastpath memory maps_bytes {}", map_memory());
    println!("fastpath memory capacity {CAPACITY}");
}

/// Adds sessions `from..to` (synthetic remote endpoints) to the table.
fn fill_sessions(dataplane: &mut Dataplane, from: u32, to: u32) {
    use gateway_common::{FlowKey, IPPROTO_TCP, Rewrite, Session};
    let sessions = dataplane.session_table();
    for index in from..to {
        let key = FlowKey {
            src: [10, 1, (index >> 16) as u8, (index >> 8) as u8],
            dst: [198, 51, 100, index as u8],
            src_port: 40000u16.to_be_bytes(),
            dst_port: 80u16.to_be_bytes(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let session = Session {
            addr: PUBLIC.octets(),
            port: 40000u16.to_be_bytes(),
            rewrite: Rewrite::Source as u8,
            state: 1,
            ..Session::default()
        };
        sessions.insert(key, session, 0).expect("insert");
    }
}

/// Locked memory of every BPF map this process holds (from /proc/self/fdinfo).
fn map_memory() -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/fdinfo")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if !info.contains("map_type:") {
            continue;
        }
        total += info
            .lines()
            .find_map(|line| line.strip_prefix("memlock:"))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

fn main() {
    // `cargo bench` passes --bench; nothing else is expected.
    punt_cost();
    punt_tap_cost();
    scale_cost();
    let mut dataplane = dataplane();
    for (hook, name) in [(Hook::Xdp, "xdp"), (Hook::Tc, "tc")] {
        let published = FrameSpec::tcp(
            SocketAddrV4::new(REMOTE, 40000),
            SocketAddrV4::new(PUBLIC, 8021),
        )
        .build();
        let miss = FrameSpec::tcp(
            SocketAddrV4::new(REMOTE, 40000),
            SocketAddrV4::new(REMOTE, 22),
        )
        .build();
        let outbound = FrameSpec::tcp(
            SocketAddrV4::new(SERVER, 41000),
            SocketAddrV4::new(REMOTE, 80),
        )
        .build();
        let published_translated = FrameSpec::tcp(
            SocketAddrV4::new(REMOTE, 40000),
            SocketAddrV4::new(SERVER, 9000),
        )
        .build();
        let outbound_translated = FrameSpec::tcp(
            SocketAddrV4::new(PUBLIC, 41000),
            SocketAddrV4::new(REMOTE, 80),
        )
        .build();
        // The first run creates the session; the timed ones hit it.
        run(
            &mut dataplane,
            hook,
            &outbound,
            &Expect::Translated(&outbound_translated),
            "session_hit",
        );
        for (case, frame, expect) in [
            (
                "published",
                &published,
                Expect::Translated(&published_translated),
            ),
            (
                "session_hit",
                &outbound,
                Expect::Translated(&outbound_translated),
            ),
            ("miss", &miss, Expect::Untouched),
        ] {
            let ns = median(
                (0..SAMPLES)
                    .map(|_| run(&mut dataplane, hook, frame, &expect, case))
                    .collect(),
            );
            println!("fastpath {name} {case} {ns}");
        }
        // New flows: each run is a new inside source port, so each creates a mapping and two
        // sessions. The kernel's clock is coarse for single runs, hence many of them.
        let base = if matches!(hook, Hook::Xdp) {
            20000
        } else {
            30000
        };
        let timings: Vec<u64> = (0..NEW_FLOWS)
            .map(|i| {
                let frame = FrameSpec::tcp(
                    SocketAddrV4::new(SERVER, base + i),
                    SocketAddrV4::new(REMOTE, 80),
                )
                .build();
                run(
                    &mut dataplane,
                    hook,
                    &frame,
                    &Expect::Masqueraded,
                    "new_flow",
                )
            })
            .collect();
        println!("fastpath {name} new_flow {}", median(timings));
    }
}

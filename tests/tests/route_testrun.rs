//! What the route lookup decides for translated packets, through both entry points with
//! BPF_PROG_TEST_RUN, in a namespace of the test's own whose routes say it (and with both
//! `forwarding` settings): the ICMP errors the kernel would send about a packet, sent by the
//! programs to its *original* sender from the gateway's address on its side, quoting what it
//! sent (TTL expiry, `unreachable` and `prohibit` routes, a next hop that never resolves, a
//! packet with DF and IPv4 options too big for the next link); a `blackhole` route dropping
//! silently; a packet with no route handed to the stack as it arrived; no error about an ICMP
//! error; the kernel's rate limit per destination; and every refusal of the lookup counted.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use common::{Hook, counter, dropped, pass, run_from};
use gateway_common::{Counter, icmp::neighbour};
use gateway_tests::{
    check_environment, dataplane::masquerade, frame::FrameSpec, netns::Netns, packet,
};
use gateway_user::{
    config::{Forwarding, Timeouts},
    dataplane::Dataplane,
};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const INSIDE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// On the outside link, with no neighbour entry: it never resolves.
const SILENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);
/// Prefixes of the namespace's routes: `unreachable`, `prohibit`, `blackhole`, and none.
const UNREACHABLE: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 9);
const PROHIBITED: Ipv4Addr = Ipv4Addr::new(10, 0, 10, 9);
const BLACKHOLE: Ipv4Addr = Ipv4Addr::new(10, 0, 11, 9);
const UNROUTED: Ipv4Addr = Ipv4Addr::new(10, 0, 12, 9);
const LOOPBACK_IFINDEX: u32 = 1;
const XDP_TX: u32 = 3;
const TC_ACT_REDIRECT: u32 = 7;

/// The gateway's routes, in a fresh namespace: an inside link (10.0.0.1/24), an outside link
/// (203.0.113.1/24, MTU 1400, one permanent neighbour), the refusing routes, forwarding on.
/// The test runs arrive on loopback (the kernel's choice for XDP; TC is told so).
fn namespace() -> Netns {
    let netns =
        Netns::create(&format!("{}-route", gateway_tests::netns::unique_prefix())).expect("netns");
    netns
        .sh(&format!(
            "set -e
            ip link set lo up
            sysctl -qw net.ipv4.ip_forward=1
            ip link add gwin type veth peer name gwin-peer
            ip link add gwout type veth peer name gwout-peer
            for dev in gwin gwin-peer gwout gwout-peer; do ip link set $dev up; done
            ip link set gwout mtu 1400
            ip addr add {INSIDE_ADDRESS}/24 dev gwin
            ip addr add {PUBLIC}/24 dev gwout
            ip neigh add {REMOTE} lladdr 02:00:00:00:00:aa dev gwout nud permanent
            ip route add unreachable 10.0.9.0/24
            ip route add prohibit 10.0.10.0/24
            ip route add blackhole 10.0.11.0/24"
        ))
        .expect("routes");
    netns
}

fn masquerading(forwarding: Forwarding) -> Dataplane {
    let mut dataplane = Dataplane::load(false, 4096).expect("load");
    dataplane
        .configure_nat(
            Some(&masquerade(PUBLIC)),
            &Timeouts::default(),
            forwarding,
            &[],
        )
        .expect("configure");
    dataplane
}

fn run(dataplane: &mut Dataplane, hook: Hook, frame: &[u8]) -> (u32, Vec<u8>) {
    run_from(dataplane, hook, frame, Some(LOOPBACK_IFINDEX))
}

fn answered(hook: Hook) -> u32 {
    match hook {
        Hook::Xdp => XDP_TX,
        Hook::Tc => TC_ACT_REDIRECT,
    }
}

/// Asserts `frame` was answered with ICMP `kind`/`code` (and `mtu`) from the gateway's
/// inside address to its sender, quoting its IPv4 header and 8 bytes exactly, back to the
/// Ethernet neighbour it came from; for TC followed only by the zeroed trailer.
fn assert_answer(
    hook: Hook,
    (verdict, out): (u32, Vec<u8>),
    frame: &[u8],
    (kind, code, mtu): (u8, u8, u16),
    what: &str,
) {
    assert_eq!(verdict, answered(hook), "{hook:?} {what}: verdict");
    assert_eq!(
        &out[..6],
        &frame[6..12],
        "{hook:?} {what}: to the neighbour"
    );
    assert_eq!(&out[6..12], &frame[..6], "{hook:?} {what}: from us");
    let error = packet::icmp_error(&out)
        .unwrap_or_else(|err| panic!("{hook:?} {what}: {err}"))
        .unwrap_or_else(|| panic!("{hook:?} {what}: not an ICMP error: {out:02x?}"));
    assert_eq!((error.kind, error.code), (kind, code), "{hook:?} {what}");
    assert_eq!(error.next_hop_mtu(), mtu, "{hook:?} {what}: MTU field");
    assert_eq!(error.src, INSIDE_ADDRESS, "{hook:?} {what}: from");
    assert_eq!(
        &error.dst.octets()[..],
        &frame[26..30],
        "{hook:?} {what}: to"
    );
    let ihl = ((frame[14] & 0x0f) as usize) * 4;
    assert_eq!(
        error.quote,
        &frame[14..14 + ihl + 8],
        "{hook:?} {what}: the original header and 8 bytes"
    );
    let trailer = match hook {
        Hook::Xdp => 0,
        Hook::Tc => gateway_common::icmp::ERROR_TRAILER_LEN,
    };
    assert_eq!(error.padding, vec![0; trailer], "{hook:?} {what}: after it");
}

fn udp(from: Ipv4Addr, port: u16, to: Ipv4Addr, ttl: u8) -> FrameSpec {
    FrameSpec {
        ttl,
        ..FrameSpec::udp(SocketAddrV4::new(from, port), SocketAddrV4::new(to, 7000))
    }
}

/// Senders, one per case: the rate limit is per destination of the errors.
struct Senders(u8);

impl Senders {
    fn next(&mut self) -> Ipv4Addr {
        self.0 += 1;
        Ipv4Addr::new(10, 0, 0, self.0)
    }
}

fn the_route_decides(forwarding: Forwarding) {
    check_environment().expect("environment");
    let netns = namespace();
    let routes = Netns::existing(netns.name()).expect("netns");
    netns
        .spawn(move || {
            let mut dataplane = masquerading(forwarding);
            let mut senders = Senders(1);
            let mut burst_sent = 0;
            let hooks = [Hook::Xdp, Hook::Tc];
            for hook in hooks {
                // Forwarded: through the stack, or for TC with BPF forwarding redirected.
                let frame = udp(senders.next(), 5000, REMOTE, 64).build();
                let (verdict, out) = run(&mut dataplane, hook, &frame);
                let forwarded = match (hook, forwarding) {
                    (Hook::Tc, Forwarding::Bpf) => TC_ACT_REDIRECT,
                    // XDP redirects only to attached interfaces: none here.
                    _ => pass(hook),
                };
                assert_eq!(verdict, forwarded, "{hook:?}: forwarded");
                assert_eq!(packet::summarize(&out).unwrap().src, PUBLIC);

                let frame = udp(senders.next(), 5000, REMOTE, 1).build();
                let result = run(&mut dataplane, hook, &frame);
                assert_answer(hook, result, &frame, (11, 0, 0), "TTL 1");

                let frame = FrameSpec {
                    ip_options: vec![1, 1, 1, 0], // NOP NOP NOP EOL
                    ..udp(senders.next(), 5000, REMOTE, 1)
                }
                .build();
                let result = run(&mut dataplane, hook, &frame);
                assert_answer(hook, result, &frame, (11, 0, 0), "TTL 1, IPv4 options");

                let frame = FrameSpec {
                    ttl: 1,
                    ..FrameSpec::icmp_echo(
                        SocketAddrV4::new(senders.next(), 777),
                        SocketAddrV4::new(REMOTE, 0),
                        true,
                    )
                }
                .build();
                let result = run(&mut dataplane, hook, &frame);
                assert_answer(hook, result, &frame, (11, 0, 0), "echo request, TTL 1");

                let frame = udp(senders.next(), 5000, UNREACHABLE, 64).build();
                let result = run(&mut dataplane, hook, &frame);
                assert_answer(hook, result, &frame, (3, 1, 0), "unreachable route");

                let frame = udp(senders.next(), 5000, PROHIBITED, 64).build();
                let result = run(&mut dataplane, hook, &frame);
                assert_answer(hook, result, &frame, (3, 13, 0), "prohibit route");

                // Too big for the 1400-byte outside link, with DF and options.
                let frame = FrameSpec {
                    ip_options: vec![1, 1, 1, 0],
                    payload: vec![0x5a; 1500 - 24 - 8],
                    ..udp(senders.next(), 5000, REMOTE, 64)
                }
                .build();
                let result = run(&mut dataplane, hook, &frame);
                assert_answer(hook, result, &frame, (3, 4, 1400), "frag needed, options");

                let frame = udp(senders.next(), 5000, BLACKHOLE, 64).build();
                let (verdict, _) = run(&mut dataplane, hook, &frame);
                assert_eq!(verdict, dropped(hook), "{hook:?}: blackhole route");

                // No route: the stack gets it as it arrived, and answers it itself.
                let frame = udp(senders.next(), 5000, UNROUTED, 64).build();
                let (verdict, out) = run(&mut dataplane, hook, &frame);
                assert_eq!(verdict, pass(hook), "{hook:?}: no route");
                assert_eq!(
                    out, frame,
                    "{hook:?}: no route: untranslated, byte for byte"
                );

                // An ICMP error about a masqueraded connection, expiring here: translated,
                // and dropped without an error about it.
                let sender = senders.next();
                let outbound = udp(sender, 5000, REMOTE, 64);
                let (_, out) = run(&mut dataplane, hook, &outbound.build());
                let public = packet::summarize(&out).unwrap().src_port;
                let translated = FrameSpec {
                    src: SocketAddrV4::new(PUBLIC, public),
                    ..outbound
                };
                let error = FrameSpec {
                    ttl: 1,
                    ..FrameSpec::icmp_error(REMOTE, PUBLIC, 3, 3, &translated)
                };
                let suppressed = counter(&dataplane, Counter::IcmpErrorSuppressed);
                let (verdict, _) = run(&mut dataplane, hook, &error.build());
                assert_eq!(verdict, dropped(hook), "{hook:?}: expiring ICMP error");
                assert_eq!(
                    counter(&dataplane, Counter::IcmpErrorSuppressed),
                    suppressed + 1
                );

                // The kernel's limit per destination: a burst of 6, then one a second.
                let sender = senders.next();
                let start = Instant::now();
                let verdicts: Vec<u32> = (0..10)
                    .map(|port| {
                        let frame = udp(sender, 6000 + port, REMOTE, 1).build();
                        run(&mut dataplane, hook, &frame).0
                    })
                    .collect();
                // (A second of delay anywhere in between refills one more.)
                let refilled = start.elapsed().as_secs() as usize;
                let sent = verdicts.iter().filter(|&&v| v == answered(hook)).count();
                assert!(
                    verdicts[..6].iter().all(|&v| v == answered(hook))
                        && sent <= 6 + refilled
                        && verdicts
                            .iter()
                            .all(|&v| v == answered(hook) || v == dropped(hook)),
                    "{hook:?}: {sent} of 10 answered: {verdicts:?}"
                );
                burst_sent += sent as u64;
            }

            // A next hop that never resolves: handed on while the kernel would resolve it,
            // then answered with host unreachable.
            let frames: Vec<Vec<u8>> = hooks
                .iter()
                .map(|_| udp(senders.next(), 5000, SILENT, 64).build())
                .collect();
            let handed_on = |hook: Hook| match (hook, forwarding) {
                (Hook::Tc, Forwarding::Bpf) => TC_ACT_REDIRECT,
                _ => pass(hook),
            };
            for (hook, frame) in hooks.iter().zip(&frames) {
                let (verdict, _) = run(&mut dataplane, *hook, frame);
                assert_eq!(verdict, handed_on(*hook), "{hook:?}: unresolved, at first");
            }
            std::thread::sleep(Duration::from_nanos(neighbour::FAILED_AFTER_NS));
            for (hook, frame) in hooks.iter().zip(&frames) {
                let result = run(&mut dataplane, *hook, frame);
                assert_answer(*hook, result, frame, (3, 1, 0), "next hop never resolved");
            }
            // Resolved after all (the kernel learnt it): forgotten, so that when it is
            // unresolved again (flushed from the table) the kernel gets to resolve it anew.
            routes.sh(&format!(
                "ip neigh replace {SILENT} lladdr 02:00:00:00:00:bb dev gwout nud permanent"
            ))?;
            for (hook, frame) in hooks.iter().zip(&frames) {
                let (verdict, _) = run(&mut dataplane, *hook, frame);
                assert_eq!(verdict, handed_on(*hook), "{hook:?}: resolved");
            }
            routes.sh(&format!("ip neigh del {SILENT} dev gwout"))?;
            for (hook, frame) in hooks.iter().zip(&frames) {
                let (verdict, _) = run(&mut dataplane, *hook, frame);
                assert_eq!(verdict, handed_on(*hook), "{hook:?}: unresolved anew");
            }

            let expected = [
                (Counter::TimeExceededSent, 2 * 3 + burst_sent),
                (Counter::IcmpErrorRateLimited, 2 * 10 - burst_sent),
                (Counter::UnreachableSent, 2 * 2 + 2),
                (Counter::FragNeededSent, 2),
                (Counter::FibUnreachable, 2),
                (Counter::FibProhibit, 2),
                (Counter::FibBlackhole, 2),
                (Counter::FibNotForwarded, 2),
                (Counter::PassedUntranslated, 2),
                (Counter::FibFragNeeded, 2),
                (Counter::IcmpErrorSuppressed, 2),
                (Counter::FibForwardingDisabled, 0),
            ];
            for (wanted, value) in expected {
                assert_eq!(counter(&dataplane, wanted), value, "{wanted:?}");
            }
            // Each hook: the silent next hop three times, and the inside host the ICMP error
            // was for (on the inside link, never resolved either).
            assert_eq!(counter(&dataplane, Counter::FibNoNeighbour), 2 * 4);
            Ok(())
        })
        .join()
        .expect("test thread")
        .expect("in the namespace");
}

#[test]
fn the_route_decides_with_bpf_forwarding() {
    the_route_decides(Forwarding::Bpf);
}

#[test]
fn the_route_decides_with_kernel_forwarding() {
    the_route_decides(Forwarding::Kernel);
}

/// With forwarding off on the interface a packet arrived on, the lookup refuses it and the
/// stack gets it translated (where it is dropped); counted.
#[test]
fn forwarding_disabled_is_counted() {
    check_environment().expect("environment");
    let netns = namespace();
    netns
        .sh("sysctl -qw net.ipv4.conf.lo.forwarding=0")
        .expect("forwarding off");
    netns
        .spawn(move || {
            let mut dataplane = masquerading(Forwarding::Bpf);
            for hook in [Hook::Xdp, Hook::Tc] {
                let frame = udp(Ipv4Addr::new(10, 0, 0, 2), 5000, REMOTE, 1).build();
                let (verdict, out) = run(&mut dataplane, hook, &frame);
                assert_eq!(verdict, pass(hook), "{hook:?}");
                assert_eq!(packet::summarize(&out).unwrap().src, PUBLIC, "translated");
            }
            assert_eq!(counter(&dataplane, Counter::FibForwardingDisabled), 2);
            assert_eq!(counter(&dataplane, Counter::TimeExceededSent), 0);
            Ok(())
        })
        .join()
        .expect("test thread")
        .expect("in the namespace");
}

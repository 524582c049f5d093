//! The punt path under BPF_PROG_TEST_RUN: which packets go to the agent (published FTP
//! control endpoints, masqueraded connections to `[ftp] control_ports`), that they are never
//! forwarded, that the ring record is the packet itself, and that a full ring fails closed.

use std::net::{Ipv4Addr, SocketAddrV4};

mod common;

use aya::programs::{TestRun, TestRunOptions};
use common::{Hook, TC_ACT_SHOT, XDP_DROP, counter, dropped, ftp_dataplane, run};
use gateway_common::{Counter, PuntReason};
use gateway_tests::{check_environment, frame::FrameSpec};
use gateway_user::alg::shell::decode;

const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const INSIDE_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const OUTSIDE_SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const ETH_LEN: usize = 14;

#[test]
fn control_packets_go_to_the_ring_whole_and_no_further() {
    let mut dataplane = ftp_dataplane();
    let mut ring = dataplane.take_punt_ring().expect("ring");
    let cases = [
        (
            FrameSpec::tcp(
                SocketAddrV4::new(CLIENT, 40000),
                SocketAddrV4::new(PUBLIC, 21),
            ),
            PuntReason::PublishedFromClient as u8,
        ),
        (
            FrameSpec::tcp(
                SocketAddrV4::new(SERVER, 21),
                SocketAddrV4::new(CLIENT, 40000),
            ),
            PuntReason::PublishedFromServer as u8,
        ),
        (
            FrameSpec::tcp(
                SocketAddrV4::new(INSIDE_CLIENT, 41000),
                SocketAddrV4::new(OUTSIDE_SERVER, 21),
            ),
            PuntReason::MasqueradeFromClient as u8,
        ),
        (
            FrameSpec::tcp(
                SocketAddrV4::new(OUTSIDE_SERVER, 21),
                SocketAddrV4::new(PUBLIC, 41000),
            ),
            PuntReason::MasqueradeFromServer as u8,
        ),
    ];
    let mut punted = 0;
    for hook in [Hook::Xdp, Hook::Tc] {
        for (spec, reason) in &cases {
            let frame = spec.build();
            let (verdict, out) = run(&mut dataplane, hook, &frame);
            assert_eq!(
                verdict,
                dropped(hook),
                "{hook:?} reason {reason}: not forwarded"
            );
            assert_eq!(out, frame, "{hook:?} reason {reason}: not modified");
            punted += 1;
            let record = ring.next().expect("a record per punted packet");
            let record = decode(&record).expect("record decodes");
            assert_eq!(record.header.reason, *reason);
            assert_eq!(
                record.packet,
                &frame[ETH_LEN..],
                "the packet, from its IPv4 header"
            );
        }
    }
    assert!(ring.next().is_none());
    assert_eq!(counter(&dataplane, Counter::Punted), punted);
    assert_eq!(counter(&dataplane, Counter::DropPuntFailed), 0);

    // Neither UDP to the control port, nor TCP to other ports, nor published endpoints
    // without `alg` are punted.
    for spec in [
        FrameSpec::udp(
            SocketAddrV4::new(CLIENT, 40000),
            SocketAddrV4::new(PUBLIC, 21),
        ),
        FrameSpec::tcp(
            SocketAddrV4::new(INSIDE_CLIENT, 41001),
            SocketAddrV4::new(OUTSIDE_SERVER, 80),
        ),
    ] {
        let (verdict, _) = run(&mut dataplane, Hook::Tc, &spec.build());
        assert_ne!(verdict, TC_ACT_SHOT);
    }
    assert!(ring.next().is_none());
    assert_eq!(counter(&dataplane, Counter::Punted), punted);
}

#[test]
fn a_full_ring_drops_and_counts_instead_of_forwarding() {
    let mut dataplane = ftp_dataplane();
    // Nobody reads the ring: it fills, and every packet after that is dropped and counted.
    let frame = FrameSpec::tcp(
        SocketAddrV4::new(CLIENT, 40000),
        SocketAddrV4::new(PUBLIC, 21),
    )
    .build();
    let runs = 3000;
    let result = dataplane
        .tc()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            repeat: runs,
            ..Default::default()
        })
        .expect("test run");
    assert_eq!(result.return_value, TC_ACT_SHOT);
    let punted = counter(&dataplane, Counter::Punted);
    let failed = counter(&dataplane, Counter::DropPuntFailed);
    assert_eq!(punted + failed, u64::from(runs));
    assert!(punted > 1000, "{punted} punted before the ring filled");
    assert!(failed > 0, "the ring never filled");
    // Draining it makes room again.
    let mut ring = dataplane.take_punt_ring().expect("ring");
    let mut drained = 0;
    while ring.next().is_some() {
        drained += 1;
    }
    assert_eq!(drained, punted);
    let (verdict, _) = run(&mut dataplane, Hook::Tc, &frame);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(counter(&dataplane, Counter::Punted), punted + 1);
}

const TC_ACT_REDIRECT: u32 = 7;
const XDP_REDIRECT: u32 = 4;

/// With a tap published in `PUNT_TAP`, both hooks redirect a control packet to it
/// (TC_ACT_REDIRECT, XDP_REDIRECT: consumed, never passed on) with the punt metadata over its
/// Ethernet header, and copy nothing into the ring. When the tap is deleted, the kernel
/// empties the slot and the very next packet of either hook goes to the ring instead: a
/// vanished tap cannot swallow punts.
#[test]
fn punts_go_to_the_tap_and_fall_back_to_the_ring_when_it_is_gone() {
    check_environment().expect("environment");
    // The tap, the devmap update (which resolves the ifindex in the caller's namespace) and
    // the runs all happen in a namespace of the test's own.
    let netns = gateway_tests::netns::Netns::create(&format!(
        "{}-tap",
        gateway_tests::netns::unique_prefix()
    ))
    .expect("netns");
    let ifindex = netns.add_tap("gwtest0").expect("tap");
    let remover = gateway_tests::netns::Netns::existing(netns.name()).expect("netns");
    netns
        .spawn(move || {
            let mut dataplane = ftp_dataplane();
            let mut ring = dataplane.take_punt_ring().expect("ring");
            assert_eq!(dataplane.punt_tap().expect("read PUNT_TAP"), None);
            dataplane
                .set_punt_tap(Some(ifindex))
                .expect("publish the tap");
            assert_eq!(dataplane.punt_tap().expect("read"), Some(ifindex));
            let cases = [
                (
                    FrameSpec::tcp(
                        SocketAddrV4::new(CLIENT, 40000),
                        SocketAddrV4::new(PUBLIC, 21),
                    ),
                    PuntReason::PublishedFromClient as u8,
                ),
                (
                    FrameSpec::tcp(
                        SocketAddrV4::new(OUTSIDE_SERVER, 21),
                        SocketAddrV4::new(PUBLIC, 41000),
                    ),
                    PuntReason::MasqueradeFromServer as u8,
                ),
            ];
            for (hook, redirected) in [(Hook::Tc, TC_ACT_REDIRECT), (Hook::Xdp, XDP_REDIRECT)] {
                for (spec, reason) in &cases {
                    let frame = spec.build();
                    let (verdict, out) = run(&mut dataplane, hook, &frame);
                    assert_eq!(verdict, redirected, "{hook:?}, reason {reason}: to the tap");
                    let (meta, ip) = gateway_common::punt_frame::decode(&out)
                        .expect("punt metadata in the frame");
                    assert_eq!(meta.reason, *reason);
                    assert_eq!(ip, ETH_LEN);
                    assert_eq!(&out[ETH_LEN..], &frame[ETH_LEN..], "the packet untouched");
                    assert!(ring.next().is_none(), "nothing copied into the ring");
                }
            }
            assert_eq!(counter(&dataplane, Counter::Punted), 2 * cases.len() as u64);
            let frame = cases[0].0.build();

            // The tap goes away (as it does with its agent): the slot empties itself.
            remover.sh("ip link del gwtest0")?;
            assert_eq!(dataplane.punt_tap().expect("read"), None, "slot emptied");
            for (hook, dropped) in [(Hook::Tc, TC_ACT_SHOT), (Hook::Xdp, XDP_DROP)] {
                let (verdict, out) = run(&mut dataplane, hook, &frame);
                assert_eq!(
                    verdict, dropped,
                    "{hook:?}: no redirect to a vanished device"
                );
                assert_eq!(out, frame, "MAC addresses untouched on the ring path");
                let record = ring.next().expect("the ring took it");
                assert_eq!(decode(&record).expect("decodes").packet, &frame[ETH_LEN..]);
            }
            assert_eq!(
                counter(&dataplane, Counter::Punted),
                2 * cases.len() as u64 + 2
            );
            assert_eq!(counter(&dataplane, Counter::DropPuntFailed), 0);
            Ok(())
        })
        .join()
        .expect("test thread")
        .expect("in the namespace");
}

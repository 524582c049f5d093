//! Hairpinned FTP in the fast path, under BPF_PROG_TEST_RUN on both entry points: an inside
//! client's control packets to a published FTP endpoint go to the agent (and an inside source
//! arriving from outside is a spoof, not a hairpin), and the two hairpin expectations the
//! agent installs translate their data connection both ways, once, for their peer only.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

mod common;

use aya::programs::{TestRun, TestRunOptions};
use common::{Hook, assert_translates, counter, dropped, run};
use gateway_common::{
    Counter, Endpoint, ExpectationEntry, ExpectationKey, ExpectationKind, IPPROTO_TCP, PuntReason,
};
use gateway_tests::{check_environment, dataplane::masquerading, frame::FrameSpec};
use gateway_user::{
    alg::shell::decode,
    config::{Alg, Protocol, Publish},
    dataplane::{Dataplane, monotonic_now_ns},
};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const INSIDE_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const OTHER_INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const ETH_LEN: usize = 14;

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// 203.0.113.1:21 published for 10.0.0.2:21 with the ALG, 203.0.113.1:8021 for 10.0.0.2:9000
/// without; 10.0.0.0/24 masqueraded behind 203.0.113.1.
fn dataplane() -> Dataplane {
    check_environment().expect("environment");
    let mut dataplane = Dataplane::load(false, 4096).expect("load");
    dataplane
        .publish(&[
            Publish {
                public: at(PUBLIC, 21),
                private: at(SERVER, 21),
                protocol: Protocol::Tcp,
                alg: Some(Alg::Ftp),
                policy: None,
            },
            Publish {
                public: at(PUBLIC, 8021),
                private: at(SERVER, 9000),
                protocol: Protocol::Tcp,
                alg: None,
                policy: None,
            },
        ])
        .expect("publish");
    masquerading(&mut dataplane, PUBLIC, &[21]);
    dataplane
}

fn syn(spec: FrameSpec) -> FrameSpec {
    FrameSpec {
        tcp_flags: 0x02,
        ..spec
    }
}

#[test]
fn hairpinned_control_packets_go_to_the_agent() {
    let mut dataplane = dataplane();
    let mut ring = dataplane.take_punt_ring().expect("ring");
    let client = at(INSIDE_CLIENT, 41000);
    let cases = [
        (
            syn(FrameSpec::tcp(client, at(PUBLIC, 21))),
            PuntReason::HairpinFromClient as u8,
        ),
        (
            FrameSpec::tcp(client, at(PUBLIC, 21)),
            PuntReason::HairpinFromClient as u8,
        ),
        // The server answers the client's masquerade mapping.
        (
            FrameSpec::tcp(at(SERVER, 21), at(PUBLIC, 41000)),
            PuntReason::PublishedFromServer as u8,
        ),
    ];
    let mut punted = 0;
    for hook in [Hook::Xdp, Hook::Tc] {
        for (spec, reason) in &cases {
            let frame = spec.build();
            let (verdict, out) = run(&mut dataplane, hook, &frame);
            assert_eq!(verdict, dropped(hook), "{hook:?} reason {reason}: not on");
            assert_eq!(out, frame, "{hook:?} reason {reason}: not modified");
            punted += 1;
            let record = ring.next().expect("a record per punted packet");
            let record = decode(&record).expect("record decodes");
            assert_eq!(record.header.reason, *reason, "{hook:?}");
            assert_eq!(record.packet, &frame[ETH_LEN..]);
        }
    }
    assert!(ring.next().is_none());
    assert_eq!(counter(&dataplane, Counter::Punted), punted);
    // The fast path made nothing of its own for them.
    assert_eq!(counter(&dataplane, Counter::HairpinCreated), 0);
    assert!(dataplane.sessions().expect("sessions").is_empty());

    // A published endpoint without the ALG is still hairpinned in the fast path.
    assert_translates(
        &mut dataplane,
        Hook::Tc,
        &syn(FrameSpec::tcp(client, at(PUBLIC, 8021))),
        &syn(FrameSpec::tcp(at(PUBLIC, 41000), at(SERVER, 9000))),
        "a hairpinned connection without the ALG",
    );
    assert_eq!(counter(&dataplane, Counter::HairpinCreated), 1);
}

/// The loopback device's ifindex, where XDP test runs arrive.
const LOOPBACK: u32 = 1;

/// Runs one frame as arriving on the loopback device: XDP test runs do; a TC run is given a
/// `__sk_buff` context whose `ingress_ifindex` (offset 36, the only field set) says so.
fn run_from_loopback(dataplane: &mut Dataplane, hook: Hook, frame: &[u8]) -> (u32, Vec<u8>) {
    if let Hook::Xdp = hook {
        return run(dataplane, hook, frame);
    }
    let mut context = [0u8; 40];
    context[36..40].copy_from_slice(&LOOPBACK.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 512];
    let result = dataplane
        .tc()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&context),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// An inside source address arriving on the outside interface is a spoof: dropped, neither
/// hairpinned nor handed to the agent (which would open a control session in an inside
/// host's name, counted against its session limit).
#[test]
fn an_inside_source_from_outside_is_not_hairpinned() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut dataplane = dataplane();
        let mut ring = dataplane.take_punt_ring().expect("ring");
        // The interface a test run arrives on, as the programs see it, is the one the agent
        // would call outside.
        let probe = syn(FrameSpec::tcp(at(OUTSIDE, 40000), at(PUBLIC, 21))).build();
        run_from_loopback(&mut dataplane, hook, &probe);
        let ingress = {
            let record = ring.next().expect("the probe punted");
            decode(&record).expect("decodes").header.ifindex
        };
        assert_eq!(ingress, LOOPBACK, "{hook:?}");
        dataplane
            .set_interface_roles(LOOPBACK + 1000, LOOPBACK)
            .expect("roles");
        for destination in [at(PUBLIC, 21), at(PUBLIC, 8021)] {
            let frame = syn(FrameSpec::tcp(at(INSIDE_CLIENT, 41000), destination)).build();
            let (verdict, out) = run_from_loopback(&mut dataplane, hook, &frame);
            assert_eq!(verdict, dropped(hook), "{hook:?} to {destination}");
            assert_eq!(out, frame);
        }
        assert!(ring.next().is_none(), "{hook:?}: nothing for the agent");
        assert_eq!(counter(&dataplane, Counter::DropSpoofed), 2, "{hook:?}");
        assert_eq!(counter(&dataplane, Counter::HairpinCreated), 0, "{hook:?}");
    }
}

fn expect(
    dataplane: &mut Dataplane,
    to: SocketAddrV4,
    peer: Ipv4Addr,
    kind: u8,
    target: SocketAddrV4,
    source: Ipv4Addr,
) {
    let key = ExpectationKey {
        endpoint: Endpoint::from_socket(to, IPPROTO_TCP),
        peer: peer.octets(),
    };
    let entry = ExpectationEntry {
        target: Endpoint::from_socket(target, IPPROTO_TCP),
        kind,
        _pad: [0; 3],
        source: source.octets(),
        expires_ns: monotonic_now_ns() + Duration::from_secs(60).as_nanos() as u64,
    };
    dataplane.expect(key, entry).expect("install expectation");
}

/// Passive mode: the server's 227 named 10.0.0.2:50000, rewritten to 203.0.113.1:40001 for
/// the inside client. Its data connection reaches the server from its masquerade mapping
/// (its port kept), and the server's answers reach it from the public data endpoint.
#[test]
fn a_hairpinned_passive_data_connection_is_translated_both_ways() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut dataplane = dataplane();
        let public = at(PUBLIC, 40001);
        let server = at(SERVER, 50000);
        expect(
            &mut dataplane,
            public,
            INSIDE_CLIENT,
            ExpectationKind::HairpinToServer as u8,
            server,
            Ipv4Addr::UNSPECIFIED,
        );
        // Another inside host, and an outside host, are not its peer.
        for stranger in [at(OTHER_INSIDE, 34000), at(OUTSIDE, 34000)] {
            let frame = syn(FrameSpec::tcp(stranger, public)).build();
            let (_, out) = run(&mut dataplane, hook, &frame);
            let summary = gateway_tests::packet::summarize(&out).expect("IPv4");
            assert_ne!(
                (summary.dst, summary.dst_port),
                (SERVER, 50000),
                "{hook:?}: {stranger} let in"
            );
        }
        assert_eq!(counter(&dataplane, Counter::ExpectationUsed), 0);
        let client = at(INSIDE_CLIENT, 33000);
        assert_translates(
            &mut dataplane,
            hook,
            &syn(FrameSpec::tcp(client, public)),
            &syn(FrameSpec::tcp(at(PUBLIC, 33000), server)),
            "the client's data connection, to the server from its mapping",
        );
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(server, at(PUBLIC, 33000)),
            &FrameSpec::tcp(public, client),
            "the server's side, from the public data endpoint",
        );
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(client, public),
            &FrameSpec::tcp(at(PUBLIC, 33000), server),
            "the client's next segment, by its session",
        );
        // One-shot.
        let second = syn(FrameSpec::tcp(at(INSIDE_CLIENT, 33001), public)).build();
        let (_, out) = run(&mut dataplane, hook, &second);
        let summary = gateway_tests::packet::summarize(&out).expect("IPv4");
        assert_ne!((summary.dst, summary.dst_port), (SERVER, 50000), "{hook:?}");
        assert_eq!(counter(&dataplane, Counter::ExpectationUsed), 1, "{hook:?}");
    }
}

/// Active mode: the inside client's PORT named 10.0.0.3:40961, rewritten to 203.0.113.1:40961
/// (where the server sees its client). The server's data connection from port 20 reaches the
/// client from the server's public address, and the client's answers reach the server from
/// that masquerade endpoint.
#[test]
fn a_hairpinned_active_data_connection_is_translated_both_ways() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut dataplane = dataplane();
        let announced = at(PUBLIC, 40961);
        let client = at(INSIDE_CLIENT, 40961);
        expect(
            &mut dataplane,
            announced,
            SERVER,
            ExpectationKind::HairpinToClient as u8,
            client,
            PUBLIC,
        );
        // Only the server may open it; another inside host to that endpoint is masqueraded
        // as any connection to the public address, never delivered to the client.
        let frame = syn(FrameSpec::tcp(at(OTHER_INSIDE, 20), announced)).build();
        let (_, out) = run(&mut dataplane, hook, &frame);
        let summary = gateway_tests::packet::summarize(&out).expect("IPv4");
        assert_ne!(summary.dst, INSIDE_CLIENT, "{hook:?}: a stranger let in");
        // From outside: dropped as unsolicited.
        let frame = syn(FrameSpec::tcp(at(OUTSIDE, 20), announced)).build();
        let (verdict, out) = run(&mut dataplane, hook, &frame);
        assert_eq!(verdict, dropped(hook), "{hook:?}: an outside host let in");
        assert_eq!(out, frame);
        let server = at(SERVER, 20);
        assert_translates(
            &mut dataplane,
            hook,
            &syn(FrameSpec::tcp(server, announced)),
            &syn(FrameSpec::tcp(at(PUBLIC, 20), client)),
            "the server's data connection, to the client from the public address",
        );
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(client, at(PUBLIC, 20)),
            &FrameSpec::tcp(announced, server),
            "the client's side, from the announced endpoint",
        );
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(server, announced),
            &FrameSpec::tcp(at(PUBLIC, 20), client),
            "the server's next segment, by its session",
        );
        assert_eq!(counter(&dataplane, Counter::ExpectationUsed), 1, "{hook:?}");
        assert_eq!(
            dataplane.expectations().expect("expectations").len(),
            0,
            "{hook:?}: used once"
        );
    }
}

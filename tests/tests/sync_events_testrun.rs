//! The fast path's change events for the HA sync (`gateway_common::sync_event`), driven
//! through both entry points with BPF_PROG_TEST_RUN: off unless turned on; a new masqueraded
//! connection names its claim, mapping, both sessions and filtering entry; a packet that
//! changes nothing the standby needs names nothing, a TCP state change names its session; the
//! agent's own writes are named with them; a full ring is counted and asks for a walk.

mod common;

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4},
};

use common::{Hook, pass, run};
use gateway_common::{
    Endpoint, ExpectationEntry, ExpectationKey, ExpectationKind, FlowKey, IPPROTO_TCP, IPPROTO_UDP,
    PeerKey,
};
use gateway_tests::{check_environment, dataplane::masquerading, frame::FrameSpec};
use gateway_user::dataplane::{
    Dataplane, monotonic_now_ns,
    sync::{Changes, SyncedKey},
};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn dataplane() -> Dataplane {
    check_environment().expect("environment");
    let mut dataplane = Dataplane::load(false, 4096).expect("load");
    masquerading(&mut dataplane, PUBLIC, &[]);
    dataplane
}

fn changes(dataplane: &mut Dataplane) -> (Changes, HashSet<SyncedKey>) {
    let mut keys = Vec::new();
    let changes = dataplane.take_changes(&mut keys);
    (changes, keys.into_iter().collect())
}

/// Sends `frame` out from the inside; the public endpoint it left with.
fn send(dataplane: &mut Dataplane, hook: Hook, frame: &FrameSpec) -> SocketAddrV4 {
    let (verdict, out) = run(dataplane, hook, &frame.build());
    assert_eq!(verdict, pass(hook), "{hook:?}: {frame:?}");
    assert_eq!(gateway_tests::packet::checksum_error(&out), None);
    let summary = gateway_tests::packet::summarize(&out).expect("IPv4");
    assert_eq!(summary.src, PUBLIC, "{hook:?}: translated");
    SocketAddrV4::new(summary.src, summary.src_port)
}

fn flow_key(src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> FlowKey {
    FlowKey {
        src: src.ip().octets(),
        dst: dst.ip().octets(),
        src_port: src.port().to_be_bytes(),
        dst_port: dst.port().to_be_bytes(),
        proto,
        _pad: [0; 3],
    }
}

#[test]
fn a_new_connection_names_every_entry_it_creates_and_nothing_more() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut dataplane = dataplane();
        let inside = SocketAddrV4::new(HOST, 5353);
        let remote = SocketAddrV4::new(REMOTE, 53);

        // Off: the fast path names nothing.
        send(&mut dataplane, hook, &FrameSpec::udp(inside, remote));
        let (off, keys) = changes(&mut dataplane);
        assert_eq!((off.events, keys.len()), (0, 0), "{hook:?}: off");

        dataplane.set_sync_events(true).expect("events on");
        let other = SocketAddrV4::new(HOST, 5354);
        let public = send(&mut dataplane, hook, &FrameSpec::udp(other, remote));
        let (on, keys) = changes(&mut dataplane);
        let private = Endpoint::from_socket(other, IPPROTO_UDP);
        let public_endpoint = Endpoint::from_socket(public, IPPROTO_UDP);
        let expected: HashSet<SyncedKey> = [
            SyncedKey::ByPublic(public_endpoint),
            SyncedKey::ByPrivate(private),
            SyncedKey::Session(flow_key(other, remote, IPPROTO_UDP)),
            SyncedKey::Session(flow_key(remote, public, IPPROTO_UDP)),
            SyncedKey::Peer(PeerKey {
                public: public_endpoint,
                remote: REMOTE.octets(),
            }),
        ]
        .into_iter()
        .collect();
        assert_eq!(keys, expected, "{hook:?}");
        assert_eq!(on.events, 5, "{hook:?}");
        assert!(!on.walk_due, "{hook:?}");
        for key in &keys {
            assert!(
                dataplane.synced_entry(*key).is_some(),
                "{hook:?}: {key:?} is in its map"
            );
        }

        // The same flow again, a moment later: nothing the standby must learn.
        send(&mut dataplane, hook, &FrameSpec::udp(other, remote));
        let (_, keys) = changes(&mut dataplane);
        assert!(keys.is_empty(), "{hook:?}: {keys:?}");

        // A TCP connection: its SYN creates, its FIN changes the state.
        let client = SocketAddrV4::new(HOST, 40000);
        let server = SocketAddrV4::new(REMOTE, 80);
        let syn = FrameSpec {
            tcp_flags: 0x02,
            payload: Vec::new(),
            ..FrameSpec::tcp(client, server)
        };
        send(&mut dataplane, hook, &syn);
        let (_, keys) = changes(&mut dataplane);
        let outbound = SyncedKey::Session(flow_key(client, server, IPPROTO_TCP));
        assert!(keys.contains(&outbound), "{hook:?}: {keys:?}");
        let fin = FrameSpec {
            tcp_flags: 0x11,
            payload: Vec::new(),
            ..FrameSpec::tcp(client, server)
        };
        send(&mut dataplane, hook, &fin);
        let (_, keys) = changes(&mut dataplane);
        assert_eq!(keys, [outbound].into_iter().collect(), "{hook:?}: the FIN");

        // The agent's own writes are named with the fast path's.
        let expectation = ExpectationKey {
            endpoint: Endpoint::new(PUBLIC.octets(), 40001u16.to_be_bytes(), IPPROTO_TCP),
            peer: REMOTE.octets(),
        };
        let entry = ExpectationEntry {
            target: Endpoint::new(HOST.octets(), 50000u16.to_be_bytes(), IPPROTO_TCP),
            kind: ExpectationKind::Inbound as u8,
            _pad: [0; 3],
            source: [0; 4],
            expires_ns: monotonic_now_ns() + 60_000_000_000,
        };
        dataplane.expect(expectation, entry).expect("expect");
        let (_, keys) = changes(&mut dataplane);
        assert_eq!(
            keys,
            [SyncedKey::Expectation(expectation)].into_iter().collect(),
            "{hook:?}"
        );
    }
}

#[test]
fn a_full_ring_is_counted_and_asks_for_a_whole_walk() {
    let hook = Hook::Tc;
    let mut dataplane = dataplane();
    dataplane.set_sync_events(true).expect("events on");
    let remote = SocketAddrV4::new(REMOTE, 53);
    // Five events per new flow, 28 bytes each with the ring's header: 8,000 flows are more
    // than the ring's 1 MiB holds.
    for index in 0..8_000u32 {
        let host = Ipv4Addr::new(10, 0, 0, 2 + (index / 4000) as u8);
        let inside = SocketAddrV4::new(host, 10_000 + (index % 4000) as u16);
        let (verdict, _) = run(
            &mut dataplane,
            hook,
            &FrameSpec::udp(inside, remote).build(),
        );
        assert_eq!(verdict, pass(hook));
    }
    let lost = dataplane
        .counters()
        .expect("counters")
        .into_iter()
        .find(|(counter, _)| *counter == gateway_common::Counter::SyncEventLost)
        .expect("counter")
        .1;
    assert!(lost > 0, "the ring overflowed");
    let (changes, keys) = changes(&mut dataplane);
    assert!(changes.walk_due, "lost events ask for a walk");
    assert!(changes.events > 0 && !keys.is_empty());
    // Counted once: the next look, with nothing lost since, needs no walk.
    let (again, _) = self::changes(&mut dataplane);
    assert!(!again.walk_due);
}

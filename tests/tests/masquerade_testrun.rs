//! Masquerade and the session table, driven through both entry points with
//! BPF_PROG_TEST_RUN: mapping, endpoint-independent mapping, port allocation and exhaustion,
//! filtering, ICMP echo, expiry.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use common::{
    Hook, TC_ACT_SHOT, XDP_DROP, assert_translates, assert_untouched, counter, pass, run,
};
use gateway_common::Counter;
use gateway_tests::{check_environment, dataplane::masquerade, frame::FrameSpec};
use gateway_user::{
    config::{Filtering, Forwarding, Masquerade, Timeouts},
    dataplane::Dataplane,
};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const HOST_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const HOST_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const OTHER_REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn masquerading(
    ports: std::ops::RangeInclusive<u16>,
    filtering: Filtering,
    timeouts: Timeouts,
) -> Dataplane {
    check_environment().expect("environment");
    let mut dataplane = Dataplane::load(false, 4096).expect("load");
    let masquerade = Masquerade {
        ports,
        filtering,
        ..masquerade(PUBLIC)
    };
    dataplane
        .configure_nat(Some(&masquerade), &timeouts, Forwarding::Kernel, &[])
        .expect("configure");
    dataplane
}

fn drop(hook: Hook) -> u32 {
    match hook {
        Hook::Xdp => XDP_DROP,
        Hook::Tc => TC_ACT_SHOT,
    }
}

/// The public port a frame from `src` was given: its source port after translation.
fn translated_source(dataplane: &mut Dataplane, hook: Hook, frame: &FrameSpec) -> SocketAddrV4 {
    let (verdict, out) = run(dataplane, hook, &frame.build());
    assert_eq!(verdict, pass(hook), "{hook:?}: verdict for {frame:?}");
    let summary = gateway_tests::packet::summarize(&out).expect("an IPv4 frame");
    assert_eq!(gateway_tests::packet::checksum_error(&out), None);
    SocketAddrV4::new(summary.src, summary.src_port)
}

#[test]
fn outbound_tcp_keeps_its_port_and_replies_come_back() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut dataplane = masquerading(
            1024..=65535,
            Filtering::AddressDependent,
            Timeouts::default(),
        );
        let inside = at(HOST_A, 40000);
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(inside, at(REMOTE, 80)),
            &FrameSpec::tcp(at(PUBLIC, 40000), at(REMOTE, 80)),
            "SNAT of a new connection, port kept",
        );
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(at(REMOTE, 80), at(PUBLIC, 40000)),
            &FrameSpec::tcp(at(REMOTE, 80), inside),
            "reply DNATed back",
        );
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(inside, at(REMOTE, 80)),
            &FrameSpec::tcp(at(PUBLIC, 40000), at(REMOTE, 80)),
            "next packet by the session",
        );
        assert_eq!(counter(&dataplane, Counter::SessionCreated), 1);
        assert_eq!(counter(&dataplane, Counter::SessionHit), 2);
    }
}

#[test]
fn mapping_is_endpoint_independent_and_never_shared() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut dataplane = masquerading(
            1024..=65535,
            Filtering::AddressDependent,
            Timeouts::default(),
        );
        let first = translated_source(
            &mut dataplane,
            hook,
            &FrameSpec::udp(at(HOST_A, 5000), at(REMOTE, 53)),
        );
        // REQ-1: the same inside endpoint to another destination keeps its public endpoint.
        let again = translated_source(
            &mut dataplane,
            hook,
            &FrameSpec::udp(at(HOST_A, 5000), at(OTHER_REMOTE, 53)),
        );
        assert_eq!(first, again, "{hook:?}: endpoint-independent mapping");
        assert_eq!(first, at(PUBLIC, 5000));
        // REQ-7: another inside host with the same port gets a different public port.
        let other = translated_source(
            &mut dataplane,
            hook,
            &FrameSpec::udp(at(HOST_B, 5000), at(REMOTE, 53)),
        );
        assert_eq!(*other.ip(), PUBLIC);
        assert_ne!(other.port(), 5000, "{hook:?}: port overloading");
        assert!(other.port() >= 1024);
    }
}

#[test]
fn an_exhausted_pool_drops_and_counts() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut dataplane = masquerading(
            6000..=6000,
            Filtering::AddressDependent,
            Timeouts::default(),
        );
        let first = translated_source(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(at(HOST_A, 41000), at(REMOTE, 80)),
        );
        assert_eq!(first, at(PUBLIC, 6000), "the only port of the range");
        let (verdict, _) = run(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(at(HOST_B, 41000), at(REMOTE, 80)).build(),
        );
        assert_eq!(verdict, drop(hook));
        assert_eq!(counter(&dataplane, Counter::DropPortExhausted), 1);
    }
}

#[test]
fn filtering_admits_what_its_mode_allows() {
    for hook in [Hook::Xdp, Hook::Tc] {
        // Address-dependent (the default): the contacted host, from any port; nobody else.
        let mut dataplane = masquerading(
            20000..=20999,
            Filtering::AddressDependent,
            Timeouts::default(),
        );
        let mapped = translated_source(
            &mut dataplane,
            hook,
            &FrameSpec::udp(at(HOST_A, 20001), at(REMOTE, 53)),
        );
        assert_eq!(mapped, at(PUBLIC, 20001));
        let (verdict, _) = run(
            &mut dataplane,
            hook,
            &FrameSpec::udp(at(OTHER_REMOTE, 53), mapped).build(),
        );
        assert_eq!(
            verdict,
            drop(hook),
            "{hook:?}: unsolicited host to a mapped port"
        );
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::udp(at(REMOTE, 5353), mapped),
            &FrameSpec::udp(at(REMOTE, 5353), at(HOST_A, 20001)),
            "address-dependent filtering admits the contacted host from another port",
        );
        // Outside the masquerade range, or not to a masquerade address: the kernel's business.
        assert_untouched(
            &mut dataplane,
            hook,
            &FrameSpec::udp(at(OTHER_REMOTE, 53), at(PUBLIC, 22000)).build(),
            "port outside the range",
        );
        assert_untouched(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(at(OTHER_REMOTE, 53), at(REMOTE, 20001)).build(),
            "not to a masquerade address",
        );
        assert_eq!(counter(&dataplane, Counter::DropUnsolicited), 1);

        // Address-and-port-dependent: only the exact remote endpoint.
        let mut strict = masquerading(
            20000..=20999,
            Filtering::AddressAndPortDependent,
            Timeouts::default(),
        );
        translated_source(
            &mut strict,
            hook,
            &FrameSpec::udp(at(HOST_A, 20001), at(REMOTE, 53)),
        );
        let (verdict, _) = run(
            &mut strict,
            hook,
            &FrameSpec::udp(at(REMOTE, 5353), mapped).build(),
        );
        assert_eq!(
            verdict,
            drop(hook),
            "{hook:?}: another port of the contacted host"
        );

        // Endpoint-independent: anyone, to a mapping; still nobody to an unmapped port.
        let mut open = masquerading(
            20000..=20999,
            Filtering::EndpointIndependent,
            Timeouts::default(),
        );
        translated_source(
            &mut open,
            hook,
            &FrameSpec::udp(at(HOST_A, 20001), at(REMOTE, 53)),
        );
        assert_translates(
            &mut open,
            hook,
            &FrameSpec::udp(at(OTHER_REMOTE, 53), at(PUBLIC, 20001)),
            &FrameSpec::udp(at(OTHER_REMOTE, 53), at(HOST_A, 20001)),
            "endpoint-independent filtering admits any host to a mapping",
        );
        let (verdict, _) = run(
            &mut open,
            hook,
            &FrameSpec::udp(at(OTHER_REMOTE, 53), at(PUBLIC, 20002)).build(),
        );
        assert_eq!(verdict, drop(hook), "{hook:?}: no mapping, no entry");
    }
}

#[test]
fn icmp_echo_is_masqueraded_by_identifier() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut dataplane = masquerading(
            1024..=65535,
            Filtering::AddressDependent,
            Timeouts::default(),
        );
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::icmp_echo(at(HOST_A, 0x1234), at(REMOTE, 0), true),
            &FrameSpec::icmp_echo(at(PUBLIC, 0x1234), at(REMOTE, 0), true),
            "echo request",
        );
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::icmp_echo(at(REMOTE, 0), at(PUBLIC, 0x1234), false),
            &FrameSpec::icmp_echo(at(REMOTE, 0), at(HOST_A, 0x1234), false),
            "echo reply",
        );
        // Host B with the same identifier gets another one, and its reply finds it.
        let (_, out) = run(
            &mut dataplane,
            hook,
            &FrameSpec::icmp_echo(at(HOST_B, 0x1234), at(REMOTE, 0), true).build(),
        );
        let id = u16::from_be_bytes([out[14 + 20 + 4], out[14 + 20 + 5]]);
        assert_ne!(id, 0x1234);
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::icmp_echo(at(REMOTE, 0), at(PUBLIC, id), false),
            &FrameSpec::icmp_echo(at(REMOTE, 0), at(HOST_B, 0x1234), false),
            "second host's echo reply",
        );
        // Pings to the gateway itself are the kernel's.
        assert_untouched(
            &mut dataplane,
            hook,
            &FrameSpec::icmp_echo(at(REMOTE, 77), at(PUBLIC, 0), true).build(),
            "echo request to the gateway",
        );
    }
}

#[test]
fn idle_sessions_expire() {
    let timeouts = Timeouts {
        tcp_established: 1,
        tcp_transitory: 1,
        udp: 1,
        icmp: 1,
    };
    let mut dataplane = masquerading(30000..=30999, Filtering::AddressDependent, timeouts);
    for hook in [Hook::Xdp, Hook::Tc] {
        translated_source(
            &mut dataplane,
            hook,
            &FrameSpec::udp(at(HOST_A, 30500), at(REMOTE, 53)),
        );
    }
    std::thread::sleep(Duration::from_millis(2100));
    let (verdict, _) = run(
        &mut dataplane,
        Hook::Tc,
        &FrameSpec::udp(at(REMOTE, 53), at(PUBLIC, 30500)).build(),
    );
    assert_eq!(verdict, drop(Hook::Tc), "an expired session admits nothing");
    assert_eq!(counter(&dataplane, Counter::SessionExpired), 1);
}

#[test]
fn inside_to_inside_is_not_masqueraded() {
    let mut dataplane = masquerading(
        1024..=65535,
        Filtering::AddressDependent,
        Timeouts::default(),
    );
    for hook in [Hook::Xdp, Hook::Tc] {
        assert_untouched(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(at(HOST_A, 40000), at(HOST_B, 22)).build(),
            "inside to inside",
        );
    }
}

#[test]
fn icmp_errors_follow_the_connection_they_quote() {
    const PORT_UNREACHABLE: (u8, u8) = (3, 3);
    const TTL_EXCEEDED: (u8, u8) = (11, 0);
    let router_on_path = Ipv4Addr::new(198, 51, 100, 1);
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut dataplane = masquerading(
            1024..=65535,
            Filtering::AddressDependent,
            Timeouts::default(),
        );
        // Host B's port 5000 is taken by host A first, so B's mapping changes the port too.
        translated_source(
            &mut dataplane,
            hook,
            &FrameSpec::udp(at(HOST_A, 5000), at(REMOTE, 53)),
        );
        let public_b = translated_source(
            &mut dataplane,
            hook,
            &FrameSpec::udp(at(HOST_B, 5000), at(REMOTE, 53)),
        );
        assert_ne!(public_b.port(), 5000);
        let quoted = |src, dst| FrameSpec {
            udp_no_checksum: true,
            ..FrameSpec::udp(src, dst)
        };
        let (kind, code) = PORT_UNREACHABLE;
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::icmp_error(
                REMOTE,
                PUBLIC,
                kind,
                code,
                &quoted(public_b, at(REMOTE, 53)),
            ),
            &FrameSpec::icmp_error(
                REMOTE,
                HOST_B,
                kind,
                code,
                &quoted(at(HOST_B, 5000), at(REMOTE, 53)),
            ),
            "port unreachable back to the inside host, quoted source restored",
        );
        let (kind, code) = TTL_EXCEEDED;
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::icmp_error(
                router_on_path,
                PUBLIC,
                kind,
                code,
                &quoted(public_b, at(REMOTE, 53)),
            ),
            &FrameSpec::icmp_error(
                router_on_path,
                HOST_B,
                kind,
                code,
                &quoted(at(HOST_B, 5000), at(REMOTE, 53)),
            ),
            "time exceeded from a router on the path keeps the router's address",
        );
        // An inside host's error about a packet that came in through the masquerade.
        let (kind, code) = PORT_UNREACHABLE;
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::icmp_error(
                HOST_B,
                REMOTE,
                kind,
                code,
                &quoted(at(REMOTE, 53), at(HOST_B, 5000)),
            ),
            &FrameSpec::icmp_error(
                PUBLIC,
                REMOTE,
                kind,
                code,
                &quoted(at(REMOTE, 53), public_b),
            ),
            "an inside host's error leaves with the public address",
        );
        // Errors about no known connection are the kernel's, and tear nothing down.
        let stray = FrameSpec::icmp_error(
            REMOTE,
            PUBLIC,
            kind,
            code,
            &quoted(at(PUBLIC, 9999), at(REMOTE, 53)),
        );
        assert_untouched(
            &mut dataplane,
            hook,
            &stray.build(),
            "error about an unknown connection",
        );
        assert_eq!(counter(&dataplane, Counter::IcmpErrorTranslated), 3);
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::udp(at(REMOTE, 53), public_b),
            &FrameSpec::udp(at(REMOTE, 53), at(HOST_B, 5000)),
            "the mapping survives the errors (REQ-10)",
        );
    }
}

#[test]
fn hairpinned_connections_are_translated_both_ways() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut dataplane = masquerading(
            1024..=65535,
            Filtering::AddressDependent,
            Timeouts::default(),
        );
        let published = at(PUBLIC, 8021);
        let server = at(HOST_A, 9000);
        dataplane
            .publish(&[gateway_user::config::Publish {
                public: published,
                private: server,
                protocol: gateway_user::config::Protocol::Tcp,
                alg: None,
                policy: None,
            }])
            .unwrap();
        let client = at(HOST_B, 45000);
        // REQ-8: the server sees the client at a public endpoint, so its answer comes back
        // through the gateway, which returns it from the published endpoint.
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(client, published),
            &FrameSpec::tcp(at(PUBLIC, 45000), server),
            "client to the public address of an inside server",
        );
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(server, at(PUBLIC, 45000)),
            &FrameSpec::tcp(published, client),
            "the server's answer",
        );
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(client, published),
            &FrameSpec::tcp(at(PUBLIC, 45000), server),
            "next packet by the session",
        );
        assert_eq!(counter(&dataplane, Counter::HairpinCreated), 1);
        assert_eq!(counter(&dataplane, Counter::SessionHit), 2);
        // Outside clients still reach the server directly, without a session.
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(at(REMOTE, 50000), published),
            &FrameSpec::tcp(at(REMOTE, 50000), server),
            "an outside client, unchanged",
        );
    }
}

#[test]
fn unknown_later_fragments_never_leave_untranslated() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut dataplane = masquerading(
            1024..=65535,
            Filtering::AddressDependent,
            Timeouts::default(),
        );
        // A later fragment from an inside host whose first fragment was never seen would leave
        // with its private source: dropped and counted instead.
        let later = FrameSpec {
            frags: 0x00b9,
            ..FrameSpec::udp(at(HOST_A, 7000), at(REMOTE, 53))
        }
        .build();
        let (verdict, _) = run(&mut dataplane, hook, &later);
        assert_eq!(verdict, drop(hook));
        // Once the first fragment has passed, the later ones follow it.
        let first = FrameSpec {
            frags: 0x2000,
            ..FrameSpec::udp(at(HOST_A, 7000), at(REMOTE, 53))
        };
        let (verdict, out) = run(&mut dataplane, hook, &first.build());
        assert_eq!(verdict, pass(hook));
        assert_eq!(
            &out[26..30],
            &PUBLIC.octets(),
            "{hook:?}: first fragment's source"
        );
        let (verdict, out) = run(&mut dataplane, hook, &later);
        assert_eq!(verdict, pass(hook));
        assert_eq!(
            &out[26..30],
            &PUBLIC.octets(),
            "{hook:?}: later fragment's source"
        );
        let header_check = gateway_tests::oracle::ipv4_header(&out[14..34]).expect("IPv4 header");
        assert_eq!(
            &out[24..26],
            &header_check.to_be_bytes(),
            "{hook:?}: IPv4 header checksum"
        );
        assert_eq!(&out[34..], &later[34..], "{hook:?}: the data is untouched");
    }
}

#[test]
fn the_sweep_removes_expired_sessions_then_unused_mappings() {
    use gateway_user::dataplane::{Sweep, Sweeper, monotonic_now_ns};
    let timeouts = Timeouts {
        tcp_established: 1,
        tcp_transitory: 1,
        udp: 1,
        icmp: 1,
    };
    let mut dataplane = masquerading(31000..=31999, Filtering::AddressDependent, timeouts);
    let first = translated_source(
        &mut dataplane,
        Hook::Tc,
        &FrameSpec::udp(at(HOST_A, 31500), at(REMOTE, 53)),
    );
    let mut sweeper = Sweeper::default();
    assert_eq!(
        dataplane
            .sweep(&mut sweeper, monotonic_now_ns(), &Default::default())
            .unwrap(),
        Sweep::default(),
        "nothing idle yet"
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        dataplane
            .sweep(&mut sweeper, monotonic_now_ns(), &Default::default())
            .unwrap(),
        Sweep {
            sessions: 2,
            peers: 1,
            mappings: 0,
            expectations: 0
        },
        "both directions' sessions and the filtering entry; the mapping gets one more sweep"
    );
    assert_eq!(
        dataplane
            .sweep(&mut sweeper, monotonic_now_ns(), &Default::default())
            .unwrap(),
        Sweep {
            sessions: 0,
            peers: 0,
            mappings: 1,
            expectations: 0
        },
        "a mapping no session used in two sweeps"
    );
    // The reply of the expired connection finds nothing now.
    let (verdict, _) = run(
        &mut dataplane,
        Hook::Tc,
        &FrameSpec::udp(at(REMOTE, 53), first).build(),
    );
    assert_eq!(verdict, drop(Hook::Tc));
    // A new connection from the same endpoint is mapped afresh.
    let again = translated_source(
        &mut dataplane,
        Hook::Tc,
        &FrameSpec::udp(at(HOST_A, 31500), at(REMOTE, 53)),
    );
    assert_eq!(again, first, "the port is free again, so it is kept");
}

/// RFC 5382 REQ-2: a simultaneous open (both ends send a SYN, neither a SYN-ACK first) gets
/// through: the outside host's SYN finds the session the inside host's SYN created.
#[test]
fn a_simultaneous_open_gets_through() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut dataplane = masquerading(
            1024..=65535,
            Filtering::AddressDependent,
            Timeouts::default(),
        );
        let syn = |spec: FrameSpec| FrameSpec {
            tcp_flags: 0x02,
            ..spec
        };
        assert_translates(
            &mut dataplane,
            hook,
            &syn(FrameSpec::tcp(at(HOST_A, 42000), at(REMOTE, 42001))),
            &syn(FrameSpec::tcp(at(PUBLIC, 42000), at(REMOTE, 42001))),
            "inside SYN",
        );
        assert_translates(
            &mut dataplane,
            hook,
            &syn(FrameSpec::tcp(at(REMOTE, 42001), at(PUBLIC, 42000))),
            &syn(FrameSpec::tcp(at(REMOTE, 42001), at(HOST_A, 42000))),
            "outside SYN crossing it",
        );
    }
}

mod expectations {
    use gateway_common::{ExpectationEntry, ExpectationKey, ExpectationKind, IPPROTO_TCP};
    use gateway_user::dataplane::monotonic_now_ns;

    use super::*;

    fn syn(spec: FrameSpec) -> FrameSpec {
        FrameSpec {
            tcp_flags: 0x02,
            ..spec
        }
    }

    fn expect(
        dataplane: &mut Dataplane,
        to: SocketAddrV4,
        peer: Ipv4Addr,
        kind: u8,
        target: SocketAddrV4,
        ttl: Duration,
    ) {
        let key = ExpectationKey {
            endpoint: gateway_common::Endpoint::from_socket(to, IPPROTO_TCP),
            peer: peer.octets(),
        };
        let entry = ExpectationEntry {
            target: gateway_common::Endpoint::from_socket(target, IPPROTO_TCP),
            kind,
            _pad: [0; 3],
            source: [0; 4],
            expires_ns: monotonic_now_ns() + ttl.as_nanos() as u64,
        };
        dataplane.expect(key, entry).expect("install expectation");
    }

    /// The passive-mode case: a published server announced 10.0.0.2:50000 as 203.0.113.1:40001
    /// to the client; the client's data connection is let in, once, both directions
    /// translated, without any masquerade configured.
    #[test]
    fn an_inbound_expectation_opens_one_data_connection() {
        for hook in [Hook::Xdp, Hook::Tc] {
            check_environment().expect("environment");
            let mut dataplane = Dataplane::load(false, 4096).expect("load");
            dataplane
                .configure_nat(None, &Timeouts::default(), Forwarding::Kernel, &[])
                .expect("configure");
            let public = at(PUBLIC, 40001);
            let private = at(HOST_A, 50000);
            expect(
                &mut dataplane,
                public,
                REMOTE,
                ExpectationKind::Inbound as u8,
                private,
                Duration::from_secs(60),
            );
            // From another host: not for it.
            assert_untouched(
                &mut dataplane,
                hook,
                &syn(FrameSpec::tcp(at(OTHER_REMOTE, 33000), public)).build(),
                "wrong peer",
            );
            assert_translates(
                &mut dataplane,
                hook,
                &syn(FrameSpec::tcp(at(REMOTE, 33000), public)),
                &syn(FrameSpec::tcp(at(REMOTE, 33000), private)),
                "the announced data connection's SYN",
            );
            assert_translates(
                &mut dataplane,
                hook,
                &FrameSpec::tcp(private, at(REMOTE, 33000)),
                &FrameSpec::tcp(public, at(REMOTE, 33000)),
                "the server's side of it",
            );
            // One-shot: a second connection to the same endpoint is not let in.
            assert_untouched(
                &mut dataplane,
                hook,
                &syn(FrameSpec::tcp(at(REMOTE, 33001), public)).build(),
                "second use",
            );
            assert_eq!(counter(&dataplane, Counter::ExpectationUsed), 1);
        }
    }

    /// The active-mode case towards a published server: the server connects from port 20 to
    /// the port the outside client announced, and leaves with the public address.
    #[test]
    fn an_outbound_expectation_gives_the_server_its_public_source() {
        for hook in [Hook::Xdp, Hook::Tc] {
            let mut dataplane = Dataplane::load(false, 4096).expect("load");
            dataplane
                .configure_nat(None, &Timeouts::default(), Forwarding::Kernel, &[])
                .expect("configure");
            let client = at(REMOTE, 50000);
            expect(
                &mut dataplane,
                client,
                HOST_A,
                ExpectationKind::Outbound as u8,
                at(PUBLIC, 0),
                Duration::from_secs(60),
            );
            assert_translates(
                &mut dataplane,
                hook,
                &syn(FrameSpec::tcp(at(HOST_A, 20), client)),
                &syn(FrameSpec::tcp(at(PUBLIC, 20), client)),
                "the server's data connection",
            );
            assert_translates(
                &mut dataplane,
                hook,
                &FrameSpec::tcp(client, at(PUBLIC, 20)),
                &FrameSpec::tcp(client, at(HOST_A, 20)),
                "the client's side of it",
            );
        }
    }

    #[test]
    fn an_expired_expectation_admits_nothing_and_is_swept() {
        let mut dataplane = Dataplane::load(false, 4096).expect("load");
        dataplane
            .configure_nat(None, &Timeouts::default(), Forwarding::Kernel, &[])
            .expect("configure");
        let public = at(PUBLIC, 40002);
        expect(
            &mut dataplane,
            public,
            REMOTE,
            ExpectationKind::Inbound as u8,
            at(HOST_A, 50000),
            Duration::ZERO,
        );
        expect(
            &mut dataplane,
            at(PUBLIC, 40003),
            REMOTE,
            ExpectationKind::Inbound as u8,
            at(HOST_A, 50001),
            Duration::ZERO,
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_untouched(
            &mut dataplane,
            Hook::Tc,
            &syn(FrameSpec::tcp(at(REMOTE, 33000), public)).build(),
            "expired",
        );
        assert_eq!(counter(&dataplane, Counter::ExpectationExpired), 1);
        let mut sweeper = gateway_user::dataplane::Sweeper::default();
        let sweep = dataplane
            .sweep(&mut sweeper, monotonic_now_ns(), &Default::default())
            .unwrap();
        assert_eq!(sweep.expectations, 1, "the other expired one");
    }
}

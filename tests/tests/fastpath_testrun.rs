//! The fast path's programs run by the kernel on crafted frames (BPF_PROG_TEST_RUN), through
//! both entry points: every translation, both directions, IPv4 options, checksums equal to a
//! from-scratch recomputation, and everything unmatched passed byte for byte.

use std::net::{Ipv4Addr, SocketAddrV4};

mod common;

use common::{Hook, assert_translates, assert_untouched, run};
use gateway_common::Counter;
use gateway_tests::{check_environment, frame::FrameSpec};
use gateway_user::{
    config::{Protocol, Publish},
    dataplane::Dataplane,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn endpoint(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn loaded_dataplane() -> Dataplane {
    check_environment().expect("environment");
    let mut dataplane = Dataplane::load(false, 4096).expect("load the fast path");
    dataplane
        .publish(&[
            Publish {
                public: endpoint(PUBLIC, 8021),
                private: endpoint(SERVER, 9000),
                protocol: Protocol::Tcp,
                alg: None,
                policy: None,
            },
            Publish {
                public: endpoint(PUBLIC, 5353),
                private: endpoint(SERVER, 53),
                protocol: Protocol::Udp,
                alg: None,
                policy: None,
            },
        ])
        .expect("publish");
    dataplane
}

#[test]
fn published_tcp_is_translated_both_ways_by_both_hooks() {
    let mut dataplane = loaded_dataplane();
    for hook in [Hook::Xdp, Hook::Tc] {
        let client = endpoint(CLIENT, 40000);
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(client, endpoint(PUBLIC, 8021)),
            &FrameSpec::tcp(client, endpoint(SERVER, 9000)),
            "DNAT to the private server",
        );
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::tcp(endpoint(SERVER, 9000), client),
            &FrameSpec::tcp(endpoint(PUBLIC, 8021), client),
            "SNAT of the server's reply",
        );
    }
    let counters = dataplane.counters().unwrap();
    let get = |wanted: Counter| counters.iter().find(|(c, _)| *c == wanted).unwrap().1;
    assert_eq!(get(Counter::DnatPublished), 2);
    assert_eq!(get(Counter::SnatPublished), 2);
}

#[test]
fn ipv4_options_shift_the_transport_header() {
    let mut dataplane = loaded_dataplane();
    let client = endpoint(CLIENT, 50123);
    let short_options = vec![0x01, 0x01, 0x01, 0x00]; // NOP NOP NOP EOL
    // Record route with room for 9 addresses, then EOL padding: the longest header (60 bytes).
    let mut longest = vec![0x07, 39, 4];
    longest.resize(40, 0);
    for options in [short_options, longest] {
        for hook in [Hook::Xdp, Hook::Tc] {
            let with = |spec: FrameSpec| FrameSpec {
                ip_options: options.clone(),
                ..spec
            };
            assert_translates(
                &mut dataplane,
                hook,
                &with(FrameSpec::tcp(client, endpoint(PUBLIC, 8021))),
                &with(FrameSpec::tcp(client, endpoint(SERVER, 9000))),
                &format!("DNAT with {} bytes of IPv4 options", options.len()),
            );
            assert_translates(
                &mut dataplane,
                hook,
                &with(FrameSpec::tcp(endpoint(SERVER, 9000), client)),
                &with(FrameSpec::tcp(endpoint(PUBLIC, 8021), client)),
                &format!("SNAT with {} bytes of IPv4 options", options.len()),
            );
        }
    }
}

#[test]
fn published_udp_keeps_a_zero_checksum_zero() {
    let mut dataplane = loaded_dataplane();
    let client = endpoint(CLIENT, 33333);
    for hook in [Hook::Xdp, Hook::Tc] {
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::udp(client, endpoint(PUBLIC, 5353)),
            &FrameSpec::udp(client, endpoint(SERVER, 53)),
            "UDP DNAT",
        );
        let no_checksum = |spec: FrameSpec| FrameSpec {
            udp_no_checksum: true,
            ..spec
        };
        assert_translates(
            &mut dataplane,
            hook,
            &no_checksum(FrameSpec::udp(endpoint(SERVER, 53), client)),
            &no_checksum(FrameSpec::udp(endpoint(PUBLIC, 5353), client)),
            "UDP SNAT without checksum",
        );
    }
}

#[test]
fn everything_unmatched_passes_unchanged() {
    let mut dataplane = loaded_dataplane();
    let client = endpoint(CLIENT, 40000);
    let mut cases: Vec<(Vec<u8>, &str)> = vec![
        (
            FrameSpec::tcp(client, endpoint(PUBLIC, 22)).build(),
            "TCP to an unpublished port",
        ),
        (
            FrameSpec::udp(client, endpoint(PUBLIC, 8021)).build(),
            "UDP to a port published only for TCP",
        ),
        (
            FrameSpec::tcp(endpoint(SERVER, 9001), client).build(),
            "TCP from an unpublished server port",
        ),
        (
            FrameSpec {
                frags: 0x0010,
                ..FrameSpec::tcp(client, endpoint(PUBLIC, 8021))
            }
            .build(),
            "non-first fragment",
        ),
    ];
    // ICMP echo request to the public address.
    let mut icmp = FrameSpec::tcp(client, endpoint(PUBLIC, 8021)).build();
    icmp[14 + 9] = 1;
    cases.push((icmp, "ICMP"));
    // ARP request and an IPv6 frame.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[
        0x02, 0, 0, 0, 0, 0x02, 203, 0, 113, 2, 0, 0, 0, 0, 0, 0, 203, 0, 113, 1,
    ]);
    cases.push((arp, "ARP"));
    let mut ipv6 = vec![
        0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, 59, 64,
    ];
    ipv6.extend_from_slice(&[0u8; 32]);
    cases.push((ipv6, "IPv6"));
    // A TCP header cut short after the ports: nothing to translate safely.
    let mut truncated = FrameSpec::tcp(client, endpoint(PUBLIC, 8021)).build();
    truncated.truncate(14 + 20 + 8);
    truncated[14 + 2..14 + 4].copy_from_slice(&28u16.to_be_bytes());
    cases.push((truncated, "truncated TCP header"));

    for hook in [Hook::Xdp, Hook::Tc] {
        for (frame, what) in &cases {
            assert_untouched(&mut dataplane, hook, frame, what);
        }
    }
    let counters = dataplane.counters().unwrap();
    let get = |wanted: Counter| counters.iter().find(|(c, _)| *c == wanted).unwrap().1;
    assert_eq!(get(Counter::DnatPublished) + get(Counter::SnatPublished), 0);
    assert_eq!(
        get(Counter::PassUnmatched),
        2 * 4,
        "unpublished ports and ICMP"
    );
    assert_eq!(
        get(Counter::PassFragment),
        2,
        "a later fragment of an unknown datagram"
    );
    assert_eq!(get(Counter::PassNotIpv4), 2 * 2);
    assert_eq!(get(Counter::PassMalformed), 2);
    assert_eq!(get(Counter::DropRewriteFailed), 0);
}

#[test]
fn icmp_errors_about_published_servers_are_translated() {
    let mut dataplane = loaded_dataplane();
    let client = endpoint(CLIENT, 40000);
    let quoted = |src, dst| FrameSpec {
        udp_no_checksum: true,
        ..FrameSpec::udp(src, dst)
    };
    for hook in [Hook::Xdp, Hook::Tc] {
        // The server has nothing on the published UDP port: its port-unreachable leaves with
        // the public address, quoting the packet as the client sent it.
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::icmp_error(SERVER, CLIENT, 3, 3, &quoted(client, endpoint(SERVER, 53))),
            &FrameSpec::icmp_error(
                PUBLIC,
                CLIENT,
                3,
                3,
                &quoted(client, endpoint(PUBLIC, 5353)),
            ),
            "server's error to an outside client",
        );
        // And an outside host's error about the server's reply reaches the server.
        assert_translates(
            &mut dataplane,
            hook,
            &FrameSpec::icmp_error(
                CLIENT,
                PUBLIC,
                3,
                3,
                &quoted(endpoint(PUBLIC, 5353), client),
            ),
            &FrameSpec::icmp_error(CLIENT, SERVER, 3, 3, &quoted(endpoint(SERVER, 53), client)),
            "client's error to the server",
        );
    }
}

/// `frame` with other IPv4 addresses and its header checksum recomputed; nothing else changed.
fn with_addresses(frame: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[26..30].copy_from_slice(&src.octets());
    frame[30..34].copy_from_slice(&dst.octets());
    let ihl = ((frame[14] & 0x0f) as usize) * 4;
    let check = gateway_tests::oracle::ipv4_header(&frame[14..14 + ihl]).expect("IPv4 header");
    frame[24..26].copy_from_slice(&check.to_be_bytes());
    frame
}

#[test]
fn later_fragments_follow_their_first() {
    let mut dataplane = loaded_dataplane();
    let client = endpoint(CLIENT, 40000);
    for hook in [Hook::Xdp, Hook::Tc] {
        let first = |spec: FrameSpec| FrameSpec {
            frags: 0x2000,
            ..spec
        };
        assert_translates(
            &mut dataplane,
            hook,
            &first(FrameSpec::udp(client, endpoint(PUBLIC, 5353))),
            &first(FrameSpec::udp(client, endpoint(SERVER, 53))),
            "first fragment, translated by its ports",
        );
        // A later fragment: no transport header, only data (built here from a UDP frame
        // whose "header" is just payload bytes to the program).
        let later = FrameSpec {
            frags: 0x00b9,
            ..FrameSpec::udp(client, endpoint(PUBLIC, 5353))
        }
        .build();
        let (verdict, out) = run(&mut dataplane, hook, &later);
        assert_eq!(verdict, common::pass(hook));
        assert_eq!(
            out,
            with_addresses(&later, CLIENT, SERVER),
            "{hook:?}: later fragment"
        );
    }
    let counters = dataplane.counters().unwrap();
    let get = |wanted: Counter| counters.iter().find(|(c, _)| *c == wanted).unwrap().1;
    assert_eq!(get(Counter::FragmentTranslated), 2);
}

//! Pure ACKs of FTP control connections under BPF_PROG_TEST_RUN: with a `CONTROL_ACKS` entry
//! the programs forward them themselves (addresses translated as the connection's, sequence
//! number moved by the sender's edits, ACK number moved back by the other direction's, the
//! window shrunk, SACK blocks moved back as the ACK, timestamps untouched, checksums right),
//! across the 32-bit wrap; everything they cannot map exactly stays a punt. The frames are built by `etherparse`, never by the
//! checksum code under test.

use std::net::{Ipv4Addr, SocketAddrV4};

mod common;

use common::{Hook, counter, dropped, ftp_dataplane, pass, run};
use etherparse::{PacketBuilder, TcpOptionElement};
use gateway_common::{
    Counter, FlowKey, IPPROTO_TCP, Rewrite,
    control_ack::{ControlAck, SeqShift},
};
use gateway_tests::packet::checksum_error;
use gateway_user::dataplane::Dataplane;

const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const INSIDE_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const OUTSIDE_SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// A TCP segment as a stack sends it: `options` and `payload` as given.
struct Segment {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    window: u16,
    fin: bool,
    options: Vec<TcpOptionElement>,
    payload: Vec<u8>,
}

impl Segment {
    /// A pure ACK with timestamps, as Linux sends one.
    fn ack(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, ack: u32, window: u16) -> Segment {
        Segment {
            src,
            dst,
            seq,
            ack,
            window,
            fin: false,
            options: vec![
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::Timestamp(0x0102_0304, 0x0506_0708),
            ],
            payload: Vec::new(),
        }
    }

    fn build(&self) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(self.src.ip().octets(), self.dst.ip().octets(), 64)
            .tcp(self.src.port(), self.dst.port(), self.seq, self.window)
            .ack(self.ack)
            .options(&self.options)
            .expect("options fit");
        let builder = if self.fin { builder.fin() } else { builder };
        let mut frame = Vec::new();
        builder
            .write(&mut frame, &self.payload)
            .expect("a frame from etherparse");
        frame
    }
}

fn key(src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    FlowKey {
        src: src.ip().octets(),
        dst: dst.ip().octets(),
        src_port: src.port().to_be_bytes(),
        dst_port: dst.port().to_be_bytes(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

fn entry(
    rewrite: Rewrite,
    to: SocketAddrV4,
    seq: SeqShift,
    ack: SeqShift,
    shrink: u16,
) -> ControlAck {
    ControlAck {
        rewrite: rewrite as u8,
        window_shrink: shrink,
        addr: to.ip().octets(),
        port: to.port().to_be_bytes(),
        seq,
        ack,
        ..ControlAck::default()
    }
}

/// Forwarded as `expected` (frame for frame, checksums recomputed by the oracle).
fn assert_forwarded(
    dataplane: &mut Dataplane,
    hook: Hook,
    input: &Segment,
    expected: &Segment,
    what: &str,
) {
    let before = counter(dataplane, Counter::AlgAckForwarded);
    let (verdict, out) = run(dataplane, hook, &input.build());
    assert_eq!(verdict, pass(hook), "{hook:?} {what}: forwarded");
    assert_eq!(checksum_error(&out), None, "{hook:?} {what}: checksums");
    assert_eq!(out, expected.build(), "{hook:?} {what}: frame");
    assert_eq!(
        counter(dataplane, Counter::AlgAckForwarded),
        before + 1,
        "{what}: counted"
    );
}

fn assert_punted(dataplane: &mut Dataplane, hook: Hook, input: &Segment, what: &str) {
    let before = counter(dataplane, Counter::AlgAckForwarded);
    let frame = input.build();
    let (verdict, out) = run(dataplane, hook, &frame);
    assert_eq!(verdict, dropped(hook), "{hook:?} {what}: punted");
    assert_eq!(out, frame, "{hook:?} {what}: untouched");
    assert_eq!(
        counter(dataplane, Counter::AlgAckForwarded),
        before,
        "{what}"
    );
}

#[test]
fn a_published_servers_pure_acks_are_forwarded_through_the_edits() {
    let mut dataplane = ftp_dataplane();
    let client = SocketAddrV4::new(CLIENT, 40000);
    let public = SocketAddrV4::new(PUBLIC, 21);
    let server = SocketAddrV4::new(SERVER, 21);
    // The server's 227 grew by 6 at server sequence 5000..5050 (client sees 5000..5056): the
    // client's ACKs map back by 6 past it, not at all before it, and not inside it. The
    // client's own stream has no edit.
    let from_client = entry(
        Rewrite::Destination,
        server,
        SeqShift::uniform(0),
        SeqShift {
            low: 5000,
            high: 5056,
            before: 0,
            after: -6,
        },
        0,
    );
    dataplane
        .set_control_ack(key(client, public), from_client)
        .expect("entry");
    // The server's ACKs: its own numbers move by +6 past its rewrite (from 5050 on), and the
    // window shrinks by the growth in flight.
    let from_server = entry(
        Rewrite::Source,
        public,
        SeqShift {
            low: 5000,
            high: 5050,
            before: 0,
            after: 6,
        },
        SeqShift::uniform(0),
        6,
    );
    dataplane
        .set_control_ack(key(server, client), from_server)
        .expect("entry");
    for hook in [Hook::Xdp, Hook::Tc] {
        assert_forwarded(
            &mut dataplane,
            hook,
            &Segment::ack(client, public, 900, 5056 + 20, 501),
            &Segment::ack(client, server, 900, 5050 + 20, 501),
            "the client's ACK past the 227",
        );
        assert_forwarded(
            &mut dataplane,
            hook,
            &Segment::ack(client, public, 900, 4000, 501),
            &Segment::ack(client, server, 900, 4000, 501),
            "the client's ACK before it",
        );
        assert_forwarded(
            &mut dataplane,
            hook,
            &Segment::ack(server, client, 5050, 900, 1000),
            &Segment::ack(public, client, 5056, 900, 994),
            "the server's ACK after sending the 227",
        );
        assert_punted(
            &mut dataplane,
            hook,
            &Segment::ack(client, public, 900, 5030, 501),
            "an ACK inside the rewritten 227",
        );
        // The timestamp of the last ACK forwarded, for what the agent sends in that name.
        let written = dataplane.control_ack(key(client, public)).unwrap().unwrap();
        assert_eq!(u32::from_be_bytes(written.last_tsval), 0x0102_0304);
    }
}

#[test]
fn numbers_wrap_and_masqueraded_clients_acks_get_their_mapping() {
    let mut dataplane = ftp_dataplane();
    let inside = SocketAddrV4::new(INSIDE_CLIENT, 41000);
    let mapped = SocketAddrV4::new(PUBLIC, 41000);
    let server = SocketAddrV4::new(OUTSIDE_SERVER, 21);
    // The client's PORT grew by 6 just before the wrap.
    let from_client = entry(
        Rewrite::Source,
        mapped,
        SeqShift {
            low: u32::MAX - 30,
            high: u32::MAX - 2,
            before: 0,
            after: 6,
        },
        SeqShift::uniform(0),
        0,
    );
    dataplane
        .set_control_ack(key(inside, server), from_client)
        .expect("entry");
    let from_server = entry(
        Rewrite::Destination,
        inside,
        SeqShift::uniform(0),
        SeqShift {
            low: u32::MAX - 30,
            high: 4,
            before: 0,
            after: -6,
        },
        0,
    );
    dataplane
        .set_control_ack(key(server, mapped), from_server)
        .expect("entry");
    for hook in [Hook::Xdp, Hook::Tc] {
        assert_forwarded(
            &mut dataplane,
            hook,
            &Segment::ack(inside, server, u32::MAX - 1, 7000, 300),
            &Segment::ack(mapped, server, 4, 7000, 300),
            "the client's sequence number across the wrap",
        );
        assert_forwarded(
            &mut dataplane,
            hook,
            &Segment::ack(server, mapped, 7000, 10, 300),
            &Segment::ack(server, inside, 7000, 4, 300),
            "the server's ACK back across the wrap",
        );
        assert_punted(
            &mut dataplane,
            hook,
            &Segment::ack(server, mapped, 7000, 1, 300),
            "an ACK inside the rewritten PORT",
        );
    }
}

#[test]
fn what_is_not_a_plain_pure_ack_still_goes_to_the_agent() {
    let mut dataplane = ftp_dataplane();
    let client = SocketAddrV4::new(CLIENT, 40000);
    let public = SocketAddrV4::new(PUBLIC, 21);
    let server = SocketAddrV4::new(SERVER, 21);
    let plain = entry(
        Rewrite::Destination,
        server,
        SeqShift::uniform(0),
        SeqShift::uniform(0),
        0,
    );
    dataplane
        .set_control_ack(key(client, public), plain)
        .expect("entry");
    let ack = || Segment::ack(client, public, 900, 5000, 501);
    for hook in [Hook::Xdp, Hook::Tc] {
        assert_forwarded(
            &mut dataplane,
            hook,
            &Segment {
                options: Vec::new(),
                ..ack()
            },
            &Segment {
                options: Vec::new(),
                ..Segment::ack(client, server, 900, 5000, 501)
            },
            "a pure ACK without options",
        );
        assert_punted(
            &mut dataplane,
            hook,
            &Segment {
                payload: b"NOOP\r\n".to_vec(),
                ..ack()
            },
            "payload",
        );
        assert_punted(
            &mut dataplane,
            hook,
            &Segment { fin: true, ..ack() },
            "a FIN",
        );
        assert_punted(
            &mut dataplane,
            hook,
            &Segment {
                options: vec![
                    TcpOptionElement::Noop,
                    TcpOptionElement::Noop,
                    TcpOptionElement::SelectiveAcknowledgement((6000, 6100), [None, None, None]),
                    TcpOptionElement::Noop,
                    TcpOptionElement::Noop,
                    TcpOptionElement::Timestamp(1, 2),
                ],
                ..ack()
            },
            "SACK blocks before the timestamps (not Linux's order)",
        );
        assert_punted(
            &mut dataplane,
            hook,
            &Segment {
                options: vec![
                    TcpOptionElement::Noop,
                    TcpOptionElement::Noop,
                    TcpOptionElement::Timestamp(1, 2),
                    TcpOptionElement::Noop,
                    TcpOptionElement::WindowScale(7),
                ],
                ..ack()
            },
            "another option",
        );
        assert_punted(
            &mut dataplane,
            hook,
            &Segment::ack(SocketAddrV4::new(CLIENT, 40001), public, 900, 5000, 501),
            "a connection without an entry",
        );
    }
}

/// `ack` with SACK blocks after its timestamps, as Linux lays them out (or alone, without
/// timestamps, when `timestamps` is false).
fn with_sack(ack: Segment, blocks: &[(u32, u32)], timestamps: bool) -> Segment {
    let mut rest = [None; 3];
    for (slot, block) in rest.iter_mut().zip(&blocks[1..]) {
        *slot = Some(*block);
    }
    let mut options = if timestamps {
        ack.options.clone()
    } else {
        Vec::new()
    };
    options.extend([
        TcpOptionElement::Noop,
        TcpOptionElement::Noop,
        TcpOptionElement::SelectiveAcknowledgement(blocks[0], rest),
    ]);
    Segment { options, ..ack }
}

#[test]
fn sack_blocks_move_back_through_the_edits_across_the_wrap() {
    let mut dataplane = ftp_dataplane();
    let client = SocketAddrV4::new(CLIENT, 40002);
    let public = SocketAddrV4::new(PUBLIC, 21);
    let server = SocketAddrV4::new(SERVER, 21);
    // The server's 227 grew by 6 just before the wrap: server numbers u32::MAX - 40 ..
    // u32::MAX - 10 are u32::MAX - 40 .. u32::MAX - 4 for the client, and everything after
    // it is 6 further on (past the wrap). The client's ACK and SACK edges map back by 6
    // past the 227, not at all before it, and not inside it.
    let from_client = entry(
        Rewrite::Destination,
        server,
        SeqShift::uniform(0),
        SeqShift {
            low: u32::MAX - 40,
            high: u32::MAX - 4,
            before: 0,
            after: -6,
        },
        0,
    );
    dataplane
        .set_control_ack(key(client, public), from_client)
        .expect("entry");
    let ack = |ack: u32| Segment::ack(client, public, 900, ack, 501);
    let sent = |ack: u32| Segment::ack(client, server, 900, ack, 501);
    for hook in [Hook::Xdp, Hook::Tc] {
        assert_forwarded(
            &mut dataplane,
            hook,
            &with_sack(ack(u32::MAX - 4), &[(20, 40)], true),
            &with_sack(sent(u32::MAX - 10), &[(14, 34)], true),
            "one block past the wrap",
        );
        assert_forwarded(
            &mut dataplane,
            hook,
            &with_sack(
                ack(u32::MAX - 50),
                &[(u32::MAX - 2, 10), (u32::MAX - 48, u32::MAX - 45), (60, 70)],
                true,
            ),
            &with_sack(
                sent(u32::MAX - 50),
                &[(u32::MAX - 8, 4), (u32::MAX - 48, u32::MAX - 45), (54, 64)],
                true,
            ),
            "three blocks (the most beside timestamps), one before the 227, one across the wrap",
        );
        assert_forwarded(
            &mut dataplane,
            hook,
            &with_sack(
                ack(u32::MAX - 4),
                &[(100, 110), (120, 130), (140, 150), (160, 170)],
                false,
            ),
            &with_sack(
                sent(u32::MAX - 10),
                &[(94, 104), (114, 124), (134, 144), (154, 164)],
                false,
            ),
            "four blocks without timestamps",
        );
        assert_punted(
            &mut dataplane,
            hook,
            &with_sack(
                ack(u32::MAX - 50),
                &[(20, 40), (u32::MAX - 20, u32::MAX - 8)],
                true,
            ),
            "a block whose edges lie inside the rewritten 227 (the first one maps: nothing is written)",
        );
    }
}

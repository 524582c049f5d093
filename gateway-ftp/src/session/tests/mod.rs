//! The FTP session's unit tests, by theme: the translation of addresses, ports and sequence
//! numbers ([`translation`]), the policy's checks and what they do ([`policy`]), and what
//! the fast path may do with pure ACKs ([`acks`]). Here: the sessions they start from, the
//! segments they send, and the SYNs, login and greeting before the lines under test.

mod acks;
mod policy;
mod translation;

use std::net::{Ipv4Addr, SocketAddrV4};

use super::*;

const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const C_ISN: u32 = 5000;
const S_ISN: u32 = 9000;
/// A published server's 227, announcing 10.0.0.2:50000 (3 bytes longer once rewritten
/// to the public address and port 40001).
const PASV_REPLY: &str = "227 Entering Passive Mode (10,0,0,2,195,80).\r\n";
/// A masqueraded client, and the outside server it talks to.
const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// Hands out ports from 40000 up.
struct Ports(u16);

impl PortAllocator for Ports {
    fn allocate(&mut self, _public: Ipv4Addr, _private: SocketAddrV4) -> Option<u16> {
        self.0 += 1;
        Some(self.0)
    }
}

/// A session under a policy that refuses only what no FTP client does: what these tests look
/// at is the translation.
fn translating(endpoints: Endpoints, max_line: usize) -> Session {
    Session::new(
        endpoints,
        Arc::new(Policy {
            max_line,
            ..Policy::permissive()
        }),
    )
}

fn published() -> Session {
    translating(
        Endpoints {
            client_real: CLIENT,
            client_seen: CLIENT,
            server_real: SERVER,
            server_seen: PUBLIC,
        },
        512,
    )
}

/// An inside client's session with an outside server, masqueraded behind [`PUBLIC`].
fn masqueraded() -> Session {
    translating(
        Endpoints {
            client_real: INSIDE,
            client_seen: PUBLIC,
            server_real: REMOTE,
            server_seen: REMOTE,
        },
        512,
    )
}

fn seg(seq: u32, ack: u32, flags: u8, payload: &str) -> TcpSegment {
    TcpSegment {
        seq,
        ack,
        flags,
        window: 65535,
        window_scale: None,
        sack: Vec::new(),
        payload: payload.as_bytes().to_vec(),
    }
}

/// `payload` from `by` in one ACK segment at `seq`, acknowledging `ack`: what the session
/// does with it.
fn send(
    session: &mut Session,
    ports: &mut Ports,
    by: Direction,
    seq: u32,
    ack: u32,
    payload: &str,
) -> Vec<Action> {
    session
        .on_segment(by, seg(seq, ack, flags::ACK, payload), ports)
        .unwrap()
}

/// The first line from `by` after the SYNs (and the login, see [`handshake`]): at its
/// stream's next byte, acknowledging all the other side sent.
fn first_line(session: &mut Session, ports: &mut Ports, by: Direction, line: &str) -> Vec<Action> {
    let (seq, ack) = match by {
        Direction::ClientToServer => (C_ISN + 1, S_ISN + 1),
        Direction::ServerToClient => (S_ISN + 1, C_ISN + 1),
    };
    send(session, ports, by, seq, ack, line)
}

fn emitted(actions: &[Action]) -> Vec<&TcpSegment> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Emit { segment, .. } => Some(segment),
            _ => None,
        })
        .collect()
}

/// Both SYNs, with the given initial sequence numbers.
fn syns(session: &mut Session, ports: &mut Ports, client_isn: u32, server_isn: u32) {
    session
        .on_segment(
            Direction::ClientToServer,
            seg(client_isn, 0, flags::SYN, ""),
            ports,
        )
        .unwrap();
    session
        .on_segment(
            Direction::ServerToClient,
            seg(
                server_isn,
                client_isn.wrapping_add(1),
                flags::SYN | flags::ACK,
                "",
            ),
            ports,
        )
        .unwrap();
}

/// The login before the commands under test, one line at a time: (sender, line).
const LOGIN: [(Direction, &str); 5] = [
    (Direction::ServerToClient, "220 ready\r\n"),
    (Direction::ClientToServer, "USER u\r\n"),
    (Direction::ServerToClient, "331 password\r\n"),
    (Direction::ClientToServer, "PASS p\r\n"),
    (Direction::ServerToClient, "230 in\r\n"),
];

/// Client connects and logs in: returns the session ready for commands, the client's next
/// byte at `C_ISN + 1` and the server's at `S_ISN + 1` (the SYNs are placed so that the login
/// ends there).
fn handshake(session: &mut Session, ports: &mut Ports) {
    let sent = |by: Direction| -> u32 {
        LOGIN
            .iter()
            .filter(|(direction, _)| *direction == by)
            .map(|(_, line)| line.len() as u32)
            .sum()
    };
    let mut next = [
        C_ISN - sent(Direction::ClientToServer) + 1,
        S_ISN - sent(Direction::ServerToClient) + 1,
    ];
    syns(session, ports, next[0] - 1, next[1] - 1);
    for (direction, line) in LOGIN {
        let at = direction.index();
        let actions = send(
            session,
            ports,
            direction,
            next[at],
            next[direction.opposite().index()],
            line,
        );
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Violation { .. })),
            "login: {line}"
        );
        next[at] += line.len() as u32;
    }
    assert_eq!(next, [C_ISN + 1, S_ISN + 1]);
}

/// `session` after the SYNs and the login ([`handshake`]), with its port allocator.
fn logged_in(mut session: Session) -> (Session, Ports) {
    let mut ports = Ports(40000);
    handshake(&mut session, &mut ports);
    (session, ports)
}

// With a policy: the protocol state is followed and violations acted on.

fn guarded(policy: Policy) -> Session {
    Session::new(
        Endpoints {
            client_real: CLIENT,
            client_seen: CLIENT,
            server_real: SERVER,
            server_seen: PUBLIC,
        },
        Arc::new(policy),
    )
}

/// `session` after the SYNs and the server's greeting (sent and acknowledged), with its
/// port allocator and the next client and server sequence numbers.
fn greeted(mut session: Session) -> (Session, Ports, u32, u32) {
    let mut ports = Ports(40000);
    syns(&mut session, &mut ports, C_ISN, S_ISN);
    let greeting = "220 ready\r\n";
    first_line(
        &mut session,
        &mut ports,
        Direction::ServerToClient,
        greeting,
    );
    (session, ports, C_ISN + 1, S_ISN + 1 + greeting.len() as u32)
}

fn violations(actions: &[Action]) -> Vec<Check> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Violation { check, .. } => Some(*check),
            _ => None,
        })
        .collect()
}

use std::net::{Ipv4Addr, SocketAddrV4};

use super::*;
use crate::inspect::embedded_address;
use gateway_common::control_ack::SeqShift;

const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const C_ISN: u32 = 5000;
const S_ISN: u32 = 9000;

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
        let actions = session
            .on_segment(
                direction,
                seg(
                    next[at],
                    next[direction.opposite().index()],
                    flags::ACK,
                    line,
                ),
                ports,
            )
            .unwrap();
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

#[test]
fn a_published_servers_227_is_rewritten_after_its_expectation_is_installed() {
    let mut session = published();
    let mut ports = Ports(40000);
    handshake(&mut session, &mut ports);
    let reply = "227 Entering Passive Mode (10,0,0,2,195,80).\r\n";
    let actions = session
        .on_segment(
            Direction::ServerToClient,
            seg(S_ISN + 1, C_ISN + 1, flags::ACK, reply),
            &mut ports,
        )
        .unwrap();
    let expectation = Expectation {
        peer: CLIENT,
        public: SocketAddrV4::new(PUBLIC, 40001),
        private: SocketAddrV4::new(SERVER, 50000),
    };
    assert_eq!(
        actions[0],
        Action::InstallExpectation(expectation),
        "expectation first"
    );
    let out = emitted(&actions);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].payload,
        b"227 Entering Passive Mode (203,0,113,1,156,65).\r\n"
    );
    assert_eq!(out[0].seq, S_ISN + 1);
    // The client acknowledges the longer line; the server hears its own numbering.
    let delta = 3;
    let ack = S_ISN + 1 + reply.len() as u32 + delta;
    let actions = session
        .on_segment(
            Direction::ClientToServer,
            seg(C_ISN + 1, ack, flags::ACK, "RETR f\r\n"),
            &mut ports,
        )
        .unwrap();
    assert_eq!(emitted(&actions)[0].ack, S_ISN + 1 + reply.len() as u32);
    // And the server's next segment moves by the edit.
    let actions = session
        .on_segment(
            Direction::ServerToClient,
            seg(
                S_ISN + 1 + reply.len() as u32,
                C_ISN + 9,
                flags::ACK,
                "150 ok\r\n",
            ),
            &mut ports,
        )
        .unwrap();
    assert_eq!(
        emitted(&actions)[0].seq,
        S_ISN + 1 + reply.len() as u32 + delta
    );
}

#[test]
fn windows_shrink_by_the_growth_in_flight_in_scaled_units() {
    let mut session = published();
    let mut ports = Ports(40000);
    let mut syn = seg(C_ISN, 0, flags::SYN, "");
    syn.window_scale = Some(7);
    session
        .on_segment(Direction::ClientToServer, syn, &mut ports)
        .unwrap();
    let mut syn_ack = seg(S_ISN, C_ISN + 1, flags::SYN | flags::ACK, "");
    syn_ack.window_scale = Some(7);
    session
        .on_segment(Direction::ServerToClient, syn_ack, &mut ports)
        .unwrap();
    let reply = "227 Entering Passive Mode (10,0,0,2,195,80).\r\n";
    session
        .on_segment(
            Direction::ServerToClient,
            seg(S_ISN + 1, C_ISN + 1, flags::ACK, reply),
            &mut ports,
        )
        .unwrap();
    // The client has not acknowledged the 3 bytes of growth yet: its window, as the
    // server sees it, is one 128-byte unit smaller.
    let window_of = |actions: Vec<Action>| emitted(&actions)[0].window;
    let mut ack = seg(C_ISN + 1, S_ISN + 1, flags::ACK, "");
    ack.window = 500;
    let actions = session
        .on_segment(Direction::ClientToServer, ack.clone(), &mut ports)
        .unwrap();
    assert_eq!(window_of(actions), 499);
    // Once the client acknowledges the rewritten line, nothing is in flight.
    ack.ack = S_ISN + 1 + reply.len() as u32 + 3;
    let actions = session
        .on_segment(Direction::ClientToServer, ack, &mut ports)
        .unwrap();
    assert_eq!(window_of(actions), 500);
}

#[test]
fn a_masqueraded_clients_port_and_eprt_are_rewritten() {
    let inside = Ipv4Addr::new(10, 0, 0, 5);
    let remote = Ipv4Addr::new(198, 51, 100, 7);
    let mut session = translating(
        Endpoints {
            client_real: inside,
            client_seen: PUBLIC,
            server_real: remote,
            server_seen: remote,
        },
        512,
    );
    let mut ports = Ports(40000);
    handshake(&mut session, &mut ports);
    // One command at a time (a PORT in the same flight as another command is refused).
    let port = "PORT 10,0,0,5,4,1\r\n";
    let actions = session
        .on_segment(
            Direction::ClientToServer,
            seg(C_ISN + 1, S_ISN + 1, flags::ACK, port),
            &mut ports,
        )
        .unwrap();
    assert!(
        matches!(actions[0], Action::InstallExpectation(Expectation { peer, .. }) if peer == remote)
    );
    assert_eq!(emitted(&actions)[0].payload, b"PORT 203,0,113,1,156,65\r\n");
    let grown = 6;
    let ok = "200 ok\r\n";
    session
        .on_segment(
            Direction::ServerToClient,
            seg(
                S_ISN + 1,
                C_ISN + 1 + port.len() as u32 + grown,
                flags::ACK,
                ok,
            ),
            &mut ports,
        )
        .unwrap();
    let actions = session
        .on_segment(
            Direction::ClientToServer,
            seg(
                C_ISN + 1 + port.len() as u32,
                S_ISN + 1 + ok.len() as u32,
                flags::ACK,
                "EPRT |1|10.0.0.5|1026|\r\n",
            ),
            &mut ports,
        )
        .unwrap();
    assert!(matches!(actions[0], Action::InstallExpectation(_)));
    let out = emitted(&actions);
    assert_eq!(out[0].payload, b"EPRT |1|203.0.113.1|40002|\r\n");
    assert_eq!(
        out[0].seq,
        C_ISN + 1 + port.len() as u32 + grown,
        "after the longer PORT"
    );
}

#[test]
fn bounce_and_low_ports_get_no_expectation() {
    let inside = Ipv4Addr::new(10, 0, 0, 5);
    let remote = Ipv4Addr::new(198, 51, 100, 7);
    let mut session = translating(
        Endpoints {
            client_real: inside,
            client_seen: PUBLIC,
            server_real: remote,
            server_seen: remote,
        },
        512,
    );
    let mut ports = Ports(40000);
    handshake(&mut session, &mut ports);
    for (line, why, check) in [
        (
            "PORT 192,0,2,9,4,1\r\n",
            "announces 192.0.2.9",
            Check::Bounce,
        ),
        ("PORT 10,0,0,5,0,25\r\n", "below 1024", Check::LowPort),
        ("PORT 10,0,0,5,4\r\n", "malformed PORT", Check::Malformed),
    ] {
        let seq = C_ISN + 1;
        let mut fresh = translating(session.endpoints, 512);
        handshake(&mut fresh, &mut ports);
        let actions = fresh
            .on_segment(
                Direction::ClientToServer,
                seg(seq, S_ISN + 1, flags::ACK, line),
                &mut ports,
            )
            .unwrap();
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::InstallExpectation(_))),
            "{line}"
        );
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Violation { reason, .. } if reason.contains(why))),
            "{line}: {actions:?}"
        );
        let out = emitted(&actions);
        assert!(
            out[0].payload.is_empty(),
            "{line}: never reaches the server"
        );
        assert_eq!(
            out[1].payload,
            check.reject_reply().as_bytes(),
            "{line}: the client hears why"
        );
    }
}

#[test]
fn active_mode_towards_a_published_server_needs_an_outbound_expectation() {
    let mut session = published();
    let mut ports = Ports(40000);
    handshake(&mut session, &mut ports);
    let actions = session
        .on_segment(
            Direction::ClientToServer,
            seg(
                C_ISN + 1,
                S_ISN + 1,
                flags::ACK,
                "PORT 203,0,113,2,195,80\r\n",
            ),
            &mut ports,
        )
        .unwrap();
    assert_eq!(
        actions[0],
        Action::InstallOutboundExpectation(OutboundExpectation {
            opener: SERVER,
            to: SocketAddrV4::new(CLIENT, 50000),
            source: PUBLIC,
        })
    );
    assert_eq!(
        emitted(&actions)[0].payload,
        b"PORT 203,0,113,2,195,80\r\n",
        "nothing to rewrite"
    );
}

#[test]
fn a_229_gets_the_public_port() {
    let mut session = published();
    let mut ports = Ports(40000);
    handshake(&mut session, &mut ports);
    let actions = session
        .on_segment(
            Direction::ServerToClient,
            seg(
                S_ISN + 1,
                C_ISN + 1,
                flags::ACK,
                "229 Entering Extended Passive Mode (|||50000|)\r\n",
            ),
            &mut ports,
        )
        .unwrap();
    assert_eq!(
        actions[0],
        Action::InstallExpectation(Expectation {
            peer: CLIENT,
            public: SocketAddrV4::new(PUBLIC, 40001),
            private: SocketAddrV4::new(SERVER, 50000),
        })
    );
    assert_eq!(
        emitted(&actions)[0].payload,
        b"229 Entering Extended Passive Mode (|||40001|)\r\n"
    );
}

#[test]
fn a_fin_sends_a_held_line_on_as_it_is() {
    let mut session = published();
    let mut ports = Ports(40000);
    handshake(&mut session, &mut ports);
    let held = session
        .on_segment(
            Direction::ServerToClient,
            seg(S_ISN + 1, C_ISN + 1, flags::ACK, "227 Entering"),
            &mut ports,
        )
        .unwrap();
    assert_eq!(
        emitted(&held)[0].payload,
        b"",
        "held back, only the ACK goes"
    );
    let actions = session
        .on_segment(
            Direction::ServerToClient,
            seg(S_ISN + 13, C_ISN + 1, flags::ACK | flags::FIN, ""),
            &mut ports,
        )
        .unwrap();
    let out = emitted(&actions);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload, b"227 Entering");
    assert_eq!(out[0].seq, S_ISN + 1);
    assert_ne!(
        out[0].flags & flags::FIN,
        0,
        "the FIN rides on the flushed bytes"
    );
}

/// Found by fuzzing (fuzz/regressions/ftp_session): after a line too long, further
/// segments used to index past the held line and panic.
#[test]
fn a_line_too_long_ends_the_stream_without_a_panic() {
    let mut session = translating(published().endpoints, 16);
    let mut ports = Ports(40000);
    handshake(&mut session, &mut ports);
    let long = seg(
        S_ISN + 1,
        C_ISN + 1,
        flags::ACK,
        "150 far more than sixteen bytes",
    );
    let actions = session
        .on_segment(Direction::ServerToClient, long, &mut ports)
        .unwrap();
    assert_eq!(violations(&actions), vec![Check::LineTooLong]);
    assert!(actions.contains(&Action::Terminate), "{actions:?}");
    for offset in [0, 5, 31, 40] {
        let more = seg(
            S_ISN + 1 + offset,
            C_ISN + 1,
            flags::ACK | flags::FIN,
            "227 (10,0,0,2,4,1)\r\n",
        );
        let actions = session
            .on_segment(Direction::ServerToClient, more, &mut ports)
            .unwrap();
        assert!(actions.is_empty(), "nothing after the reset: {actions:?}");
    }
}

#[test]
fn segments_before_the_syn_are_an_error() {
    let mut session = published();
    let result = session.on_segment(
        Direction::ClientToServer,
        seg(1, 1, flags::ACK, "USER x\r\n"),
        &mut Ports(0),
    );
    assert!(matches!(result, Err(SessionError::NotStarted)));
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

/// Handshake and the server's greeting (sent and acknowledged). Returns the next client
/// and server sequence numbers.
fn greeted(session: &mut Session, ports: &mut Ports) -> (u32, u32) {
    syns(session, ports, C_ISN, S_ISN);
    let greeting = "220 ready\r\n";
    session
        .on_segment(
            Direction::ServerToClient,
            seg(S_ISN + 1, C_ISN + 1, flags::ACK, greeting),
            ports,
        )
        .unwrap();
    (C_ISN + 1, S_ISN + 1 + greeting.len() as u32)
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

#[test]
fn rejected_commands_are_answered_by_the_gateway_and_the_session_goes_on() {
    let mut session = guarded(Policy::default());
    let mut ports = Ports(40000);
    let (c, s) = greeted(&mut session, &mut ports);
    // RETR before login: the server never sees it; the client gets 503 in the server's
    // name, acknowledging the command.
    let retr = "RETR /etc/passwd\r\n";
    let actions = session
        .on_segment(
            Direction::ClientToServer,
            seg(c, s, flags::ACK, retr),
            &mut ports,
        )
        .unwrap();
    assert_eq!(violations(&actions), vec![Check::OutOfState]);
    let out = emitted(&actions);
    assert_eq!(out.len(), 2);
    assert!(
        out[0].payload.is_empty(),
        "nothing of it reaches the server"
    );
    assert_eq!(
        out[0].seq, c,
        "the server's view of the client stream did not move"
    );
    let reply = Check::OutOfState.reject_reply();
    assert_eq!(out[1].payload, reply.as_bytes());
    assert_eq!((out[1].seq, out[1].ack), (s, c + retr.len() as u32));
    let c = c + retr.len() as u32;
    // The client goes on: its USER reaches the server at the server's numbering (the
    // refused command is not in it), and the server's reply lands after the injected one.
    let user = "USER alice\r\n";
    let actions = session
        .on_segment(
            Direction::ClientToServer,
            seg(c, s + reply.len() as u32, flags::ACK, user),
            &mut ports,
        )
        .unwrap();
    let out = emitted(&actions);
    assert_eq!(out[0].payload, user.as_bytes());
    assert_eq!(
        out[0].seq,
        C_ISN + 1,
        "the server sees USER where RETR would have been"
    );
    assert_eq!(
        out[0].ack, s,
        "the client's ACK of the injected reply maps back"
    );
    let actions = session
        .on_segment(
            Direction::ServerToClient,
            seg(
                s,
                C_ISN + 1 + user.len() as u32,
                flags::ACK,
                "331 password\r\n",
            ),
            &mut ports,
        )
        .unwrap();
    let out = emitted(&actions);
    assert_eq!(out[0].seq, s + reply.len() as u32);
    assert_eq!(
        out[0].ack,
        c + user.len() as u32,
        "acks map forward past the refused bytes"
    );
    assert!(violations(&actions).is_empty());
}

#[test]
fn forbidden_users_denied_commands_and_tls_are_refused() {
    let policy = Policy {
        deny_users: vec!["root".into()],
        deny_commands: vec!["SITE".into()],
        pipelining: true,
        ..Policy::default()
    };
    let mut session = guarded(policy);
    let mut ports = Ports(40000);
    let (c, s) = greeted(&mut session, &mut ports);
    let lines = "USER root\r\nAUTH TLS\r\nSITE CHMOD 777 x\r\nNOOP\r\n";
    let actions = session
        .on_segment(
            Direction::ClientToServer,
            seg(c, s, flags::ACK, lines),
            &mut ports,
        )
        .unwrap();
    assert_eq!(
        violations(&actions),
        vec![Check::ForbiddenUser, Check::Tls, Check::DeniedCommand]
    );
    let out = emitted(&actions);
    assert_eq!(
        out[0].payload, b"NOOP\r\n",
        "only the allowed command goes on"
    );
    let replies: Vec<&[u8]> = out[1..].iter().map(|s| s.payload.as_slice()).collect();
    assert_eq!(
        replies,
        vec![
            Check::ForbiddenUser.reject_reply().as_bytes(),
            Check::Tls.reject_reply().as_bytes(),
            Check::DeniedCommand.reject_reply().as_bytes(),
        ]
    );
}

#[test]
fn a_bounce_port_under_reset_resets_both_sides() {
    let mut session = guarded(Policy {
        on_violation: ViolationAction::Reset,
        ..Policy::default()
    });
    let mut ports = Ports(40000);
    let (mut c, mut s) = greeted(&mut session, &mut ports);
    for (command, reply) in [("USER a\r\n", "331 p\r\n"), ("PASS b\r\n", "230 ok\r\n")] {
        session
            .on_segment(
                Direction::ClientToServer,
                seg(c, s, flags::ACK, command),
                &mut ports,
            )
            .unwrap();
        c += command.len() as u32;
        session
            .on_segment(
                Direction::ServerToClient,
                seg(s, c, flags::ACK, reply),
                &mut ports,
            )
            .unwrap();
        s += reply.len() as u32;
    }
    // PORT naming a third host.
    let actions = session
        .on_segment(
            Direction::ClientToServer,
            seg(c, s, flags::ACK, "PORT 198,51,100,9,0,80\r\n"),
            &mut ports,
        )
        .unwrap();
    assert_eq!(violations(&actions), vec![Check::Bounce]);
    let out = emitted(&actions);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|segment| segment.flags & flags::RST != 0));
    assert_eq!(
        out[0].seq, s,
        "the client's RST is at the server stream's next byte"
    );
    assert_eq!(
        out[1].seq, c,
        "the server's RST is at the client stream's next byte"
    );
    assert_eq!(actions.last(), Some(&Action::Terminate));
    assert!(session.terminated());
    let after = session
        .on_segment(
            Direction::ClientToServer,
            seg(c, s, flags::ACK, "NOOP\r\n"),
            &mut ports,
        )
        .unwrap();
    assert!(after.is_empty(), "nothing passes after a reset");
}

#[test]
fn embedded_addresses_and_spoofed_replies() {
    let mut session = guarded(Policy {
        on_violation: ViolationAction::Drop,
        ..Policy::default()
    });
    let mut ports = Ports(40000);
    let (c, s) = greeted(&mut session, &mut ports);
    let lines = "USER a\r\nPASS b\r\n";
    let actions = session
        .on_segment(
            Direction::ClientToServer,
            seg(c, s, flags::ACK, lines),
            &mut ports,
        )
        .unwrap();
    assert!(violations(&actions).is_empty());
    assert_eq!(
        emitted(&actions)[0].payload,
        b"USER a\r\n",
        "PASS waits for USER's reply"
    );
    // A reply carrying an address it does not announce, and a 227 from the client.
    let actions = session
        .on_segment(
            Direction::ServerToClient,
            seg(s, c + 8, flags::ACK, "331 see 10,0,0,2,195,80 now\r\n"),
            &mut ports,
        )
        .unwrap();
    assert_eq!(violations(&actions), vec![Check::Embedded]);
    let actions = session
        .on_segment(
            Direction::ClientToServer,
            seg(
                c + lines.len() as u32,
                s,
                flags::ACK,
                "227 (10,0,0,2,1,1)\r\n",
            ),
            &mut ports,
        )
        .unwrap();
    assert_eq!(violations(&actions), vec![Check::SpoofedDirection]);
    assert!(embedded_address(b"x 1,2,3,4,5,6"));
    assert!(embedded_address(b"EPRT |1|10.0.0.2|5000|"));
    assert!(!embedded_address(b"214 PORT PASV EPRT EPSV"));
    assert!(!embedded_address(b"150 file (1048576 bytes)"));
    assert!(!embedded_address(b"1,2,3,4,5"));
}

#[test]
fn a_held_partial_line_is_acknowledged_for_the_receiver_and_owed_until_delivered() {
    let mut session = guarded(Policy::default());
    let mut ports = Ports(40000);
    let (c, s) = greeted(&mut session, &mut ports);
    // Half a command: held back, and acknowledged in the server's name.
    let actions = session
        .on_segment(
            Direction::ClientToServer,
            seg(c, s, flags::ACK, "US"),
            &mut ports,
        )
        .unwrap();
    let acknowledgement = actions
        .iter()
        .find_map(|action| match action {
            Action::Emit {
                direction: Direction::ServerToClient,
                segment,
            } => Some(segment),
            _ => None,
        })
        .expect("an ACK in the server's name");
    assert_eq!(acknowledgement.ack, c + 2);
    assert_eq!(acknowledgement.seq, s);
    assert!(acknowledgement.payload.is_empty());
    // The rest completes the line, which goes to the server whole.
    let actions = session
        .on_segment(
            Direction::ClientToServer,
            seg(c + 2, s, flags::ACK, "ER anonymous\r\n"),
            &mut ports,
        )
        .unwrap();
    assert_eq!(emitted(&actions)[0].payload, b"USER anonymous\r\n");
    // Until the server acknowledges it, the gateway owes it.
    let owed = session
        .resend_owed(Direction::ClientToServer)
        .expect("owed");
    assert_eq!(owed.payload, b"USER anonymous\r\n");
    assert_eq!(owed.seq, c);
    session
        .on_segment(
            Direction::ServerToClient,
            seg(s, c + 16, flags::ACK, ""),
            &mut ports,
        )
        .unwrap();
    assert!(session.resend_owed(Direction::ClientToServer).is_none());
}

// What the fast path may do with pure ACKs (`Session::pure_acks`).

#[test]
fn pure_acks_follow_the_edits_and_wait_while_bytes_are_held() {
    let mut session = published();
    let mut ports = Ports(40000);
    assert_eq!(
        session.pure_acks(Direction::ClientToServer),
        None,
        "before the SYNs"
    );
    handshake(&mut session, &mut ports);
    let plain = PureAcks {
        seq: SeqShift::uniform(0),
        ack: SeqShift::uniform(0),
        window_shrink: 0,
    };
    assert_eq!(session.pure_acks(Direction::ClientToServer), Some(plain));
    assert_eq!(session.pure_acks(Direction::ServerToClient), Some(plain));

    // The 227 grows by 3: the client's ACKs move back past it (and are the session's inside
    // it), the server's own numbers move forward past it, and its window shrinks meanwhile.
    let reply = "227 Entering Passive Mode (10,0,0,2,195,80).\r\n";
    session
        .on_segment(
            Direction::ServerToClient,
            seg(S_ISN + 1, C_ISN + 1, flags::ACK, reply),
            &mut ports,
        )
        .unwrap();
    let end = S_ISN + 1 + reply.len() as u32;
    let client = session.pure_acks(Direction::ClientToServer).unwrap();
    assert_eq!(client.seq, SeqShift::uniform(0));
    assert_eq!(
        client.ack.map(end + 3),
        Some(end),
        "past the rewritten line"
    );
    assert_eq!(client.ack.map(S_ISN + 1), Some(S_ISN + 1), "before it");
    assert_eq!(client.ack.map(S_ISN + 10), None, "inside it");
    let server = session.pure_acks(Direction::ServerToClient).unwrap();
    assert_eq!(server.seq.map(end), Some(end + 3));
    assert_eq!(server.window_shrink, 0, "the client's stream did not grow");
    assert_eq!(client.window_shrink, 3, "the server's growth is in flight");

    // Half a line from the client: held, so its ACKs are the session's until it is whole.
    session
        .on_segment(
            Direction::ClientToServer,
            seg(C_ISN + 1, end + 3, flags::ACK, "RET"),
            &mut ports,
        )
        .unwrap();
    assert_eq!(session.pure_acks(Direction::ClientToServer), None);
    assert_eq!(session.pure_acks(Direction::ServerToClient), None);
    session
        .on_segment(
            Direction::ClientToServer,
            seg(C_ISN + 4, end + 3, flags::ACK, "R f\r\n"),
            &mut ports,
        )
        .unwrap();
    // The gateway acknowledged the half in the server's name: owed until the server has it.
    assert_eq!(session.pure_acks(Direction::ServerToClient), None, "owed");
    session
        .on_segment(
            Direction::ServerToClient,
            seg(end, C_ISN + 1 + 8, flags::ACK, ""),
            &mut ports,
        )
        .unwrap();
    let client = session.pure_acks(Direction::ClientToServer).unwrap();
    assert_eq!(
        client.window_shrink, 0,
        "the client's ACK of the whole 227 settled the growth"
    );
    assert_eq!(client.ack.map(end + 50), Some(end + 47));
}

#[test]
fn a_reset_session_leaves_its_acks_to_the_shell() {
    let mut session = guarded(Policy {
        on_violation: ViolationAction::Reset,
        ..Policy::default()
    });
    let mut ports = Ports(40000);
    let (c, s) = greeted(&mut session, &mut ports);
    assert!(session.pure_acks(Direction::ClientToServer).is_some());
    session
        .on_segment(
            Direction::ClientToServer,
            seg(c, s, flags::ACK, "RETR /etc/passwd\r\n"),
            &mut ports,
        )
        .unwrap();
    assert!(session.terminated());
    assert_eq!(session.pure_acks(Direction::ClientToServer), None);
}

//! Hostile and unusual clients, through the session's public entry point: streams that are not
//! FTP (NAT slipstreaming), pipelined commands, multi-line announcements, and the gateway's own
//! replies.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
};

use gateway_ftp::{
    policy::{Check, NotFtpAction, Policy, ViolationAction},
    session::{
        Action, Direction, Endpoints, Expectation, PortAllocator, Session, TcpSegment, flags,
    },
};

const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const C_ISN: u32 = 7000;
const S_ISN: u32 = 90_000;

struct Ports(u16);

impl PortAllocator for Ports {
    fn allocate(&mut self, _public: Ipv4Addr, _private: SocketAddrV4) -> Option<u16> {
        self.0 += 1;
        Some(self.0)
    }
}

/// A control session with both sequence spaces tracked, as the two ends see them.
struct Lab {
    session: Session,
    ports: Ports,
    /// Next sequence number of each sender (client, server), in its own numbering.
    next: [u32; 2],
}

/// An inside client masqueraded towards an outside server (its `PORT` is rewritten).
fn masqueraded(policy: Policy) -> Lab {
    lab(
        Endpoints {
            client_real: INSIDE,
            client_seen: PUBLIC,
            server_real: REMOTE,
            server_seen: REMOTE,
        },
        policy,
    )
}

/// An outside client of a published inside server (its `227` is rewritten).
fn published(policy: Policy) -> Lab {
    lab(
        Endpoints {
            client_real: REMOTE,
            client_seen: REMOTE,
            server_real: INSIDE,
            server_seen: PUBLIC,
        },
        policy,
    )
}

fn lab(endpoints: Endpoints, policy: Policy) -> Lab {
    let mut lab = Lab {
        session: Session::new(endpoints, Arc::new(policy)),
        ports: Ports(40000),
        next: [C_ISN + 1, S_ISN + 1],
    };
    lab.segment(Direction::ClientToServer, C_ISN, flags::SYN, "");
    lab.segment(
        Direction::ServerToClient,
        S_ISN,
        flags::SYN | flags::ACK,
        "",
    );
    lab
}

impl Lab {
    fn segment(&mut self, direction: Direction, seq: u32, flags: u8, text: &str) -> Vec<Action> {
        let other = self.next[direction.opposite().index()];
        self.session
            .on_segment(
                direction,
                TcpSegment {
                    seq,
                    ack: if flags & flags::SYN != 0 && direction == Direction::ClientToServer {
                        0
                    } else {
                        other
                    },
                    flags: flags
                        | if flags & flags::SYN == 0 {
                            flags::ACK
                        } else {
                            0
                        },
                    window: 65535,
                    window_scale: None,
                    sack: Vec::new(),
                    payload: text.as_bytes().to_vec(),
                },
                &mut self.ports,
            )
            .expect("the session takes the segment")
    }

    /// `text` from `direction`'s sender, in sequence.
    fn send(&mut self, direction: Direction, text: &str) -> Vec<Action> {
        self.send_flags(direction, 0, text)
    }

    fn send_flags(&mut self, direction: Direction, flags: u8, text: &str) -> Vec<Action> {
        let seq = self.next[direction.index()];
        self.next[direction.index()] = seq.wrapping_add(text.len() as u32);
        self.segment(direction, seq, flags, text)
    }
}

/// The payload that went towards `direction`'s receiver, concatenated.
fn bytes_to(actions: &[Action], direction: Direction) -> String {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Emit {
                direction: emitted,
                segment,
            } if *emitted == direction => Some(String::from_utf8_lossy(&segment.payload)),
            _ => None,
        })
        .collect()
}

fn segments_to(actions: &[Action], direction: Direction) -> Vec<&TcpSegment> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Emit {
                direction: emitted,
                segment,
            } if *emitted == direction => Some(segment),
            _ => None,
        })
        .collect()
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

fn expectations(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|action| {
            matches!(
                action,
                Action::InstallExpectation(_) | Action::InstallOutboundExpectation(_)
            )
        })
        .count()
}

fn not_ftp(actions: &[Action]) -> Option<bool> {
    actions.iter().find_map(|action| match action {
        Action::NotFtp { passed, .. } => Some(*passed),
        _ => None,
    })
}

use Direction::{ClientToServer as C2S, ServerToClient as S2C};

const HTTP_HEAD: &str =
    "POST /upload HTTP/1.1\r\nHost: attacker.example\r\nContent-Length: 80\r\n\r\n";
const SLIPSTREAM_BODY: &str = "USER a\r\nPASS b\r\n";
const SLIPSTREAM_PORT: &str = "PORT 10,0,0,2,31,144\r\n";

/// The attacker's server plays along with every line, as it would.
fn attacker_replies(lab: &mut Lab) -> Vec<Action> {
    let mut all = Vec::new();
    for reply in ["220 hi\r\n", "331 p\r\n", "230 in\r\n", "200 PORT ok\r\n"] {
        all.extend(lab.send(S2C, reply));
    }
    all
}

#[test]
fn an_http_request_on_the_control_port_is_not_ftp_and_is_reset() {
    let mut lab = masqueraded(Policy::default());
    lab.send(S2C, "220 hi\r\n");
    let actions = lab.send(C2S, HTTP_HEAD);
    assert_eq!(not_ftp(&actions), Some(false), "reset, not passed");
    assert_eq!(violations(&actions)[0], Check::Malformed);
    let rsts = actions
        .iter()
        .filter(|action| matches!(action, Action::Emit { segment, .. } if segment.flags & flags::RST != 0))
        .count();
    assert_eq!(rsts, 2, "both sides reset");
    assert!(actions.contains(&Action::Terminate));
    assert!(
        bytes_to(&actions, C2S).is_empty(),
        "nothing of it reaches the server"
    );
    // Whatever follows, nothing passes and nothing is expected.
    let mut later = lab.send(C2S, SLIPSTREAM_BODY);
    later.extend(lab.send(C2S, SLIPSTREAM_PORT));
    later.extend(attacker_replies(&mut lab));
    assert!(later.is_empty());
    assert_eq!(lab.session.phase(), "reset");
}

#[test]
fn slipstreaming_under_every_action_opens_nothing() {
    for on_violation in [
        ViolationAction::Reject,
        ViolationAction::Drop,
        ViolationAction::Reset,
    ] {
        for not_ftp_action in [NotFtpAction::Reset, NotFtpAction::Pass] {
            for pipelining in [false, true] {
                let policy = Policy {
                    on_violation,
                    not_ftp: not_ftp_action,
                    pipelining,
                    ..Policy::default()
                };
                let mut lab = masqueraded(policy);
                let mut all = lab.send(S2C, "220 hi\r\n");
                // The PORT line starts a segment of its own, after the HTTP head and body.
                all.extend(lab.send(C2S, HTTP_HEAD));
                all.extend(lab.send(C2S, SLIPSTREAM_BODY));
                all.extend(lab.send(C2S, SLIPSTREAM_PORT));
                all.extend(attacker_replies(&mut lab));
                let case =
                    format!("{on_violation:?} / {not_ftp_action:?} / pipelining {pipelining}");
                assert_eq!(expectations(&all), 0, "{case}: an expectation appeared");
                let to_server = bytes_to(&all, C2S);
                assert!(
                    !to_server.contains("203,0,113,1"),
                    "{case}: rewritten: {to_server:?}"
                );
                match not_ftp_action {
                    NotFtpAction::Reset => assert!(to_server.is_empty(), "{case}: {to_server:?}"),
                    // Passed through untouched, as plain TCP.
                    NotFtpAction::Pass => assert_eq!(
                        to_server,
                        format!("{HTTP_HEAD}{SLIPSTREAM_BODY}{SLIPSTREAM_PORT}"),
                        "{case}"
                    ),
                }
            }
        }
    }
}

#[test]
fn a_published_server_is_guarded_the_same_way() {
    let mut lab = published(Policy::default());
    let mut all = lab.send(S2C, "220 hi\r\n");
    all.extend(lab.send(C2S, "GET / HTTP/1.0\r\n"));
    all.extend(lab.send(C2S, "PORT 203,0,113,2,31,144\r\n"));
    all.extend(lab.send(S2C, "227 Entering Passive Mode (10,0,0,2,195,80)\r\n"));
    assert_eq!(not_ftp(&all), Some(false));
    assert_eq!(expectations(&all), 0);
}

#[test]
fn a_server_that_logs_in_after_garbage_logs_in_nobody() {
    // Pass-through: the session goes on, but as plain TCP: the 230 that follows the garbage
    // is not a login, and a PORT after it is neither rewritten nor expected.
    let mut lab = masqueraded(Policy {
        not_ftp: NotFtpAction::Pass,
        ..Policy::default()
    });
    lab.send(S2C, "220 hi\r\n");
    let actions = lab.send(C2S, "\u{1}\u{2}binary junk\r\n");
    assert_eq!(not_ftp(&actions), Some(true));
    let mut all = lab.send(C2S, "USER a\r\n");
    all.extend(lab.send(S2C, "230 welcome\r\n"));
    all.extend(lab.send(C2S, SLIPSTREAM_PORT));
    all.extend(lab.send(S2C, "200 ok\r\n"));
    assert_eq!(expectations(&all), 0);
    assert_eq!(bytes_to(&all, C2S), format!("USER a\r\n{SLIPSTREAM_PORT}"));
    assert_eq!(lab.session.phase(), "not-ftp");
}

#[test]
fn lines_no_client_sends_pile_up_after_login_until_the_session_is_not_ftp() {
    let mut lab = masqueraded(Policy::default());
    lab.send(S2C, "220 hi\r\n");
    lab.send(C2S, "USER a\r\n");
    lab.send(S2C, "230 in\r\n");
    // Two are violations like any other (rejected, the session goes on)...
    for junk in ["Host: x\r\n", "Cookie: 1,2,3,4,5,6\r\n"] {
        let actions = lab.send(C2S, junk);
        assert_eq!(not_ftp(&actions), None, "{junk:?}");
        assert_eq!(violations(&actions).len(), 1);
    }
    // ...the third ends it, and with it any later announcement.
    let actions = lab.send(C2S, "X-Junk: yes\r\n");
    assert_eq!(not_ftp(&actions), Some(false));
    assert!(lab.send(C2S, SLIPSTREAM_PORT).is_empty());
}

#[test]
fn an_unknown_verb_is_not_ftp_before_login_and_passes_after() {
    let mut lab = masqueraded(Policy::default());
    lab.send(S2C, "220 hi\r\n");
    lab.send(C2S, "USER a\r\n");
    lab.send(S2C, "230 in\r\n");
    let actions = lab.send(C2S, "XYZZ magic\r\n");
    assert_eq!(
        bytes_to(&actions, C2S),
        "XYZZ magic\r\n",
        "the server answers it"
    );
    let mut lab = masqueraded(Policy::default());
    lab.send(S2C, "220 hi\r\n");
    assert_eq!(not_ftp(&lab.send(C2S, "XYZZ magic\r\n")), Some(false));
}

fn logged_in(lab: &mut Lab) {
    lab.send(S2C, "220 hi\r\n");
    lab.send(C2S, "USER a\r\n");
    lab.send(S2C, "331 p\r\n");
    lab.send(C2S, "PASS b\r\n");
    lab.send(S2C, "230 in\r\n");
}

#[test]
fn pipelined_commands_wait_for_the_reply_before_them() {
    let mut lab = published(Policy::default());
    logged_in(&mut lab);
    let client_at = lab.next[0];
    let actions = lab.send(C2S, "PASV\r\nLIST\r\n");
    assert_eq!(bytes_to(&actions, C2S), "PASV\r\n", "LIST waits");
    let ack = segments_to(&actions, S2C)
        .into_iter()
        .find(|segment| segment.payload.is_empty())
        .expect("an ACK in the server's name");
    assert_eq!(
        ack.ack,
        client_at + 12,
        "both lines acknowledged for the server"
    );
    let actions = lab.send(S2C, "227 Entering Passive Mode (10,0,0,2,195,80).\r\n");
    assert_eq!(expectations(&actions), 1);
    assert!(bytes_to(&actions, S2C).contains("203,0,113,1"));
    let released = segments_to(&actions, C2S);
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].payload, b"LIST\r\n");
    assert_eq!(
        released[0].seq,
        client_at + 6,
        "at its own place in the stream"
    );
    // Until the server acknowledges it, the gateway owes it.
    let owed = lab.session.resend_owed(C2S).expect("owed");
    assert_eq!(owed.payload, b"LIST\r\n");
}

#[test]
fn a_held_command_is_judged_in_the_state_its_predecessors_reply_made() {
    let mut lab = masqueraded(Policy::default());
    lab.send(S2C, "220 hi\r\n");
    let actions = lab.send(C2S, "USER a\r\nRETR /etc/passwd\r\n");
    assert_eq!(bytes_to(&actions, C2S), "USER a\r\n");
    assert!(violations(&actions).is_empty(), "not judged yet");
    // A 530: RETR is now before login, refused; its answer follows the server's reply.
    let actions = lab.send(S2C, "530 no\r\n");
    assert_eq!(violations(&actions), vec![Check::OutOfState]);
    assert_eq!(
        bytes_to(&actions, S2C),
        format!("530 no\r\n{}", Check::OutOfState.reject_reply())
    );
    assert!(bytes_to(&actions, C2S).is_empty());
}

#[test]
fn with_pipelining_on_refusals_still_come_in_command_order() {
    let mut lab = masqueraded(Policy {
        pipelining: true,
        deny_commands: vec!["SITE".into()],
        ..Policy::default()
    });
    logged_in(&mut lab);
    let actions = lab.send(C2S, "TYPE I\r\nSITE EXEC x\r\nNOOP\r\n");
    assert_eq!(bytes_to(&actions, C2S), "TYPE I\r\nNOOP\r\n");
    assert!(
        bytes_to(&actions, S2C).is_empty(),
        "SITE's refusal waits for TYPE's reply"
    );
    let actions = lab.send(S2C, "200 type\r\n200 noop\r\n");
    assert_eq!(
        bytes_to(&actions, S2C),
        format!(
            "200 type\r\n{}200 noop\r\n",
            Check::DeniedCommand.reject_reply()
        )
    );
}

#[test]
fn a_port_in_the_same_flight_as_other_commands_opens_nothing() {
    for pipelining in [false, true] {
        let mut lab = masqueraded(Policy {
            pipelining,
            ..Policy::default()
        });
        logged_in(&mut lab);
        let mut all = lab.send(C2S, "TYPE I\r\nPORT 10,0,0,2,31,144\r\n");
        all.extend(lab.send(S2C, "200 type\r\n"));
        assert_eq!(expectations(&all), 0, "pipelining {pipelining}");
        assert_eq!(violations(&all), vec![Check::OutOfState]);
        assert!(bytes_to(&all, S2C).ends_with(Check::OutOfState.reject_reply()));
        // The same PORT sent on its own is taken.
        let actions = lab.send(C2S, SLIPSTREAM_PORT);
        assert!(matches!(
            actions[0],
            Action::InstallExpectation(Expectation { public, .. }) if *public.ip() == PUBLIC
        ));
    }
}

#[test]
fn commands_before_the_greeting_wait_for_it() {
    let mut lab = published(Policy::default());
    let actions = lab.send(C2S, "USER a\r\n");
    assert!(bytes_to(&actions, C2S).is_empty());
    let actions = lab.send(S2C, "220 hi\r\n");
    assert_eq!(bytes_to(&actions, C2S), "USER a\r\n");
}

#[test]
fn a_fin_behind_held_lines_goes_with_the_last_of_them() {
    let mut lab = published(Policy::default());
    lab.send(S2C, "220 hi\r\n");
    let actions = lab.send_flags(C2S, flags::FIN, "USER a\r\nSYST\r\n");
    let to_server = segments_to(&actions, C2S);
    assert_eq!(to_server[0].payload, b"USER a\r\n");
    assert!(
        to_server
            .iter()
            .all(|segment| segment.flags & flags::FIN == 0)
    );
    let actions = lab.send(S2C, "331 p\r\n");
    let released = segments_to(&actions, C2S);
    assert_eq!(released[0].payload, b"SYST\r\n");
    assert_ne!(released[0].flags & flags::FIN, 0, "the FIN follows SYST");
}

#[test]
fn a_multi_line_227_is_rewritten_in_its_first_line() {
    let mut lab = published(Policy::default());
    logged_in(&mut lab);
    lab.send(C2S, "PASV\r\n");
    let actions = lab.send(
        S2C,
        "227-Entering Passive Mode (10,0,0,2,195,80)\r\n227-more text\r\n227 OK\r\n",
    );
    assert!(violations(&actions).is_empty(), "{actions:?}");
    assert_eq!(expectations(&actions), 1);
    assert_eq!(
        bytes_to(&actions, S2C),
        "227-Entering Passive Mode (203,0,113,1,156,65)\r\n227-more text\r\n227 OK\r\n"
    );
    // A first line without the address is a malformed 227; an address in a continuation
    // line is text, refused as before.
    lab.send(C2S, "PASV\r\n");
    let actions = lab.send(
        S2C,
        "227-Entering Passive Mode\r\n 10,0,0,2,195,81\r\n227 (10,0,0,2,195,82)\r\n",
    );
    assert_eq!(
        violations(&actions),
        vec![Check::Malformed, Check::Embedded, Check::Embedded]
    );
    assert_eq!(expectations(&actions), 0);
}

#[test]
fn a_reply_the_gateway_injects_is_owed_until_acknowledged() {
    let mut lab = published(Policy::default());
    lab.send(S2C, "220 hi\r\n");
    let server_at = lab.next[1];
    let actions = lab.send(C2S, "RETR x\r\n");
    assert_eq!(bytes_to(&actions, S2C), Check::OutOfState.reject_reply());
    let owed = lab.session.resend_owed(S2C).expect("the refusal is owed");
    assert_eq!(owed.payload, Check::OutOfState.reject_reply().as_bytes());
    assert_eq!(owed.seq, server_at);
    assert!(
        lab.session.resend_owed(S2C).is_some(),
        "again, until acknowledged"
    );
    // The client acknowledges it (its ACK in the server's numbering as the client sees it).
    let reply_len = Check::OutOfState.reject_reply().len() as u32;
    lab.segment(C2S, lab.next[0], 0, "");
    lab.session
        .on_segment(
            C2S,
            TcpSegment {
                seq: lab.next[0],
                ack: server_at + reply_len,
                flags: flags::ACK,
                window: 65535,
                window_scale: None,
                sack: Vec::new(),
                payload: Vec::new(),
            },
            &mut lab.ports,
        )
        .expect("an ACK");
    assert!(lab.session.resend_owed(S2C).is_none());
}

//! What the fast path may do with pure ACKs (`Session::pure_acks`).

use super::*;
use gateway_common::control_ack::SeqShift;

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
    let reply = PASV_REPLY;
    first_line(&mut session, &mut ports, Direction::ServerToClient, reply);
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
    send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        C_ISN + 1,
        end + 3,
        "RET",
    );
    assert_eq!(session.pure_acks(Direction::ClientToServer), None);
    assert_eq!(session.pure_acks(Direction::ServerToClient), None);
    send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        C_ISN + 4,
        end + 3,
        "R f\r\n",
    );
    // The gateway acknowledged the half in the server's name: owed until the server has it.
    assert_eq!(session.pure_acks(Direction::ServerToClient), None, "owed");
    send(
        &mut session,
        &mut ports,
        Direction::ServerToClient,
        end,
        C_ISN + 1 + 8,
        "",
    );
    let client = session.pure_acks(Direction::ClientToServer).unwrap();
    assert_eq!(
        client.window_shrink, 0,
        "the client's ACK of the whole 227 settled the growth"
    );
    assert_eq!(client.ack.map(end + 50), Some(end + 47));
}

#[test]
fn a_reset_session_leaves_its_acks_to_the_shell() {
    let (mut session, mut ports, c, s) = greeted(guarded(Policy {
        on_violation: ViolationAction::Reset,
        ..Policy::default()
    }));
    assert!(session.pure_acks(Direction::ClientToServer).is_some());
    send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        c,
        s,
        "RETR /etc/passwd\r\n",
    );
    assert!(session.terminated());
    assert_eq!(session.pure_acks(Direction::ClientToServer), None);
}

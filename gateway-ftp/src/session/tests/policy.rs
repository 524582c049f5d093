//! With a policy: the protocol state followed, and violations answered in the server's name,
//! dropped or reset; held partial lines acknowledged and owed.

use super::*;
use crate::inspect::embedded_address;

#[test]
fn rejected_commands_are_answered_by_the_gateway_and_the_session_goes_on() {
    let (mut session, mut ports, c, s) = greeted(guarded(Policy::default()));
    // RETR before login: the server never sees it; the client gets 503 in the server's
    // name, acknowledging the command.
    let retr = "RETR /etc/passwd\r\n";
    let actions = send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        c,
        s,
        retr,
    );
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
    let actions = send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        c,
        s + reply.len() as u32,
        user,
    );
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
    let actions = send(
        &mut session,
        &mut ports,
        Direction::ServerToClient,
        s,
        C_ISN + 1 + user.len() as u32,
        "331 password\r\n",
    );
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
    let (mut session, mut ports, c, s) = greeted(guarded(policy));
    let lines = "USER root\r\nAUTH TLS\r\nSITE CHMOD 777 x\r\nNOOP\r\n";
    let actions = send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        c,
        s,
        lines,
    );
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
    let (mut session, mut ports, mut c, mut s) = greeted(guarded(Policy {
        on_violation: ViolationAction::Reset,
        ..Policy::default()
    }));
    for (command, reply) in [("USER a\r\n", "331 p\r\n"), ("PASS b\r\n", "230 ok\r\n")] {
        send(
            &mut session,
            &mut ports,
            Direction::ClientToServer,
            c,
            s,
            command,
        );
        c += command.len() as u32;
        send(
            &mut session,
            &mut ports,
            Direction::ServerToClient,
            s,
            c,
            reply,
        );
        s += reply.len() as u32;
    }
    // PORT naming a third host.
    let actions = send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        c,
        s,
        "PORT 198,51,100,9,0,80\r\n",
    );
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
    let after = send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        c,
        s,
        "NOOP\r\n",
    );
    assert!(after.is_empty(), "nothing passes after a reset");
}

#[test]
fn embedded_addresses_and_spoofed_replies() {
    let (mut session, mut ports, c, s) = greeted(guarded(Policy {
        on_violation: ViolationAction::Drop,
        ..Policy::default()
    }));
    let lines = "USER a\r\nPASS b\r\n";
    let actions = send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        c,
        s,
        lines,
    );
    assert!(violations(&actions).is_empty());
    assert_eq!(
        emitted(&actions)[0].payload,
        b"USER a\r\n",
        "PASS waits for USER's reply"
    );
    // A reply carrying an address it does not announce, and a 227 from the client.
    let actions = send(
        &mut session,
        &mut ports,
        Direction::ServerToClient,
        s,
        c + 8,
        "331 see 10,0,0,2,195,80 now\r\n",
    );
    assert_eq!(violations(&actions), vec![Check::Embedded]);
    let actions = send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        c + lines.len() as u32,
        s,
        "227 (10,0,0,2,1,1)\r\n",
    );
    assert_eq!(violations(&actions), vec![Check::SpoofedDirection]);
    assert!(embedded_address(b"x 1,2,3,4,5,6"));
    assert!(embedded_address(b"EPRT |1|10.0.0.2|5000|"));
    assert!(!embedded_address(b"214 PORT PASV EPRT EPSV"));
    assert!(!embedded_address(b"150 file (1048576 bytes)"));
    assert!(!embedded_address(b"1,2,3,4,5"));
}

#[test]
fn a_held_partial_line_is_acknowledged_for_the_receiver_and_owed_until_delivered() {
    let (mut session, mut ports, c, s) = greeted(guarded(Policy::default()));
    // Half a command: held back, and acknowledged in the server's name.
    let actions = send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        c,
        s,
        "US",
    );
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
    let actions = send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        c + 2,
        s,
        "ER anonymous\r\n",
    );
    assert_eq!(emitted(&actions)[0].payload, b"USER anonymous\r\n");
    // Until the server acknowledges it, the gateway owes it.
    let owed = session
        .resend_owed(Direction::ClientToServer)
        .expect("owed");
    assert_eq!(owed.payload, b"USER anonymous\r\n");
    assert_eq!(owed.seq, c);
    send(
        &mut session,
        &mut ports,
        Direction::ServerToClient,
        s,
        c + 16,
        "",
    );
    assert!(session.resend_owed(Direction::ClientToServer).is_none());
}

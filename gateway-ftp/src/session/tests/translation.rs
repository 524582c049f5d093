//! The translation: addresses and ports in 227, 229, PORT and EPRT, the expectations
//! installed for them, and the sequence numbers, acknowledgements and windows moved by the
//! edits; held lines, too long lines and segments before the SYN.

use super::*;

#[test]
fn a_published_servers_227_is_rewritten_after_its_expectation_is_installed() {
    let (mut session, mut ports) = logged_in(published());
    let reply = PASV_REPLY;
    let actions = first_line(&mut session, &mut ports, Direction::ServerToClient, reply);
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
    let actions = send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        C_ISN + 1,
        ack,
        "RETR f\r\n",
    );
    assert_eq!(emitted(&actions)[0].ack, S_ISN + 1 + reply.len() as u32);
    // And the server's next segment moves by the edit.
    let actions = send(
        &mut session,
        &mut ports,
        Direction::ServerToClient,
        S_ISN + 1 + reply.len() as u32,
        C_ISN + 9,
        "150 ok\r\n",
    );
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
    let reply = PASV_REPLY;
    first_line(&mut session, &mut ports, Direction::ServerToClient, reply);
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
    let (mut session, mut ports) = logged_in(masqueraded());
    // One command at a time (a PORT in the same flight as another command is refused).
    let port = "PORT 10,0,0,5,4,1\r\n";
    let actions = first_line(&mut session, &mut ports, Direction::ClientToServer, port);
    assert!(
        matches!(actions[0], Action::InstallExpectation(Expectation { peer, .. }) if peer == REMOTE)
    );
    assert_eq!(emitted(&actions)[0].payload, b"PORT 203,0,113,1,156,65\r\n");
    let grown = 6;
    let ok = "200 ok\r\n";
    send(
        &mut session,
        &mut ports,
        Direction::ServerToClient,
        S_ISN + 1,
        C_ISN + 1 + port.len() as u32 + grown,
        ok,
    );
    let actions = send(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        C_ISN + 1 + port.len() as u32,
        S_ISN + 1 + ok.len() as u32,
        "EPRT |1|10.0.0.5|1026|\r\n",
    );
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
        let (mut session, mut ports) = logged_in(masqueraded());
        let actions = send(
            &mut session,
            &mut ports,
            Direction::ClientToServer,
            seq,
            S_ISN + 1,
            line,
        );
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
    let (mut session, mut ports) = logged_in(published());
    let actions = first_line(
        &mut session,
        &mut ports,
        Direction::ClientToServer,
        "PORT 203,0,113,2,195,80\r\n",
    );
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
    let (mut session, mut ports) = logged_in(published());
    let actions = first_line(
        &mut session,
        &mut ports,
        Direction::ServerToClient,
        "229 Entering Extended Passive Mode (|||50000|)\r\n",
    );
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
    let (mut session, mut ports) = logged_in(published());
    let held = first_line(
        &mut session,
        &mut ports,
        Direction::ServerToClient,
        "227 Entering",
    );
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
    let (mut session, mut ports) = logged_in(translating(published().endpoints, 16));
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

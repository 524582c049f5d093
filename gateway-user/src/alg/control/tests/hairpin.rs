//! Hairpinned control connections: an inside client of a published inside server, through
//! the server's public address.

use super::*;

const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const INSIDE_CLIENT: (Ipv4Addr, u16) = (INSIDE, 41000);

/// The handshake, greeting and anonymous login of 10.0.0.5:41000 to 203.0.113.1:21 (published
/// 10.0.0.2:21); returns the next sequence numbers of the client and of the server.
fn hairpinned_login(table: &mut ControlTable, maps: &mut MemoryMaps) -> (u32, u32) {
    let out = table.on_packet(
        PuntReason::HairpinFromClient as u8,
        &segment(
            INSIDE_CLIENT,
            (PUBLIC, 21),
            1,
            0,
            SYN,
            b"",
            MSS_1460.to_vec(),
        ),
        0,
        maps,
    );
    assert_eq!(out.len(), 1);
    let syn = TcpPacket::parse(&out[0].bytes).unwrap();
    // The server sees the client at its masquerade mapping, as any hairpinned connection.
    assert_eq!(
        (syn.src, syn.src_port, syn.dst, syn.dst_port),
        (PUBLIC, 41000, SERVER, 21)
    );
    assert_eq!(out[0].dst, SERVER);
    let private = Endpoint::new(INSIDE.octets(), 41000u16.to_be_bytes(), IPPROTO_TCP);
    assert_eq!(
        maps.by_private[&private].socket(),
        SocketAddrV4::new(PUBLIC, 41000)
    );
    // The server answers the mapping (punted as any published server's segment); the client
    // gets it from the public endpoint it connected to.
    let out = table.on_packet(
        PuntReason::PublishedFromServer as u8,
        &segment(
            (SERVER, 21),
            (PUBLIC, 41000),
            9,
            2,
            SYN_ACK,
            b"",
            MSS_1460.to_vec(),
        ),
        0,
        maps,
    );
    let syn_ack = TcpPacket::parse(&out[0].bytes).unwrap();
    assert_eq!(
        (syn_ack.src, syn_ack.src_port, syn_ack.dst, syn_ack.dst_port),
        (PUBLIC, 21, INSIDE, 41000)
    );
    let (mut c, mut s) = (2u32, 10u32);
    for (reply, command) in [
        ("220 hello\r\n", "USER anonymous\r\n"),
        ("331 password\r\n", "PASS x@\r\n"),
        ("230 ok\r\n", ""),
    ] {
        table.on_packet(
            PuntReason::PublishedFromServer as u8,
            &segment(
                (SERVER, 21),
                (PUBLIC, 41000),
                s,
                c,
                PSH_ACK,
                reply.as_bytes(),
                vec![],
            ),
            0,
            maps,
        );
        s += reply.len() as u32;
        if !command.is_empty() {
            table.on_packet(
                PuntReason::HairpinFromClient as u8,
                &segment(
                    INSIDE_CLIENT,
                    (PUBLIC, 21),
                    c,
                    s,
                    PSH_ACK,
                    command.as_bytes(),
                    vec![],
                ),
                0,
                maps,
            );
            c += command.len() as u32;
        }
    }
    (c, s)
}

fn data_endpoint(addr: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint::new(addr.octets(), port.to_be_bytes(), IPPROTO_TCP)
}

#[test]
fn a_hairpinned_session_is_seen_from_both_public_addresses() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    hairpinned_login(&mut table, &mut maps);
    let sessions = table.connections(0);
    assert_eq!(sessions.len(), 1);
    let info = &sessions[0];
    assert_eq!(info.client, SocketAddrV4::new(INSIDE, 41000));
    assert_eq!(info.client_seen, SocketAddrV4::new(PUBLIC, 41000));
    assert_eq!(info.server, SocketAddrV4::new(SERVER, 21));
    assert_eq!(info.server_seen, SocketAddrV4::new(PUBLIC, 21));
    assert_eq!(info.phase, "logged-in");
    // Its mapping is held against the sweep while it lives.
    assert!(
        table
            .held_endpoints(0)
            .contains(&data_endpoint(PUBLIC, 41000))
    );
}

/// Passive mode: the `227` names the public address; the data connection is admitted from
/// the inside client only, to the server, translated both ways in the fast path.
#[test]
fn a_passive_reply_to_a_hairpinned_client_gets_a_hairpin_expectation() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    let (c, s) = hairpinned_login(&mut table, &mut maps);
    let out = table.on_packet(
        PuntReason::PublishedFromServer as u8,
        &segment(
            (SERVER, 21),
            (PUBLIC, 41000),
            s,
            c,
            PSH_ACK,
            b"227 Entering Passive Mode (10,0,0,2,195,80).\r\n",
            vec![],
        ),
        SECOND,
        &mut maps,
    );
    let sent = TcpPacket::parse(&out[0].bytes).unwrap();
    assert_eq!((sent.dst, sent.dst_port), (INSIDE, 41000));
    assert_eq!(
        sent.payload,
        b"227 Entering Passive Mode (203,0,113,1,195,80).\r\n"
    );
    assert_eq!(
        maps.log[maps.log.len() - 2..],
        ["claim 203.0.113.1:50000", "expect 203.0.113.1:50000"]
    );
    let key = ExpectationKey {
        endpoint: data_endpoint(PUBLIC, 50000),
        peer: INSIDE.octets(),
    };
    let entry = maps.expectations[&key];
    assert_eq!(entry.kind, ExpectationKind::HairpinToServer as u8);
    assert_eq!(entry.target.socket(), SocketAddrV4::new(SERVER, 50000));
    assert_eq!(entry.source, [0; 4]);
    assert_eq!(maps.expectations.len(), 1, "for the client only");
}

/// Active mode: the `PORT` names the client's masquerade endpoint (where the server sees its
/// client); the server's data connection is admitted from the server only, and reaches the
/// client from the server's public address.
#[test]
fn a_port_command_of_a_hairpinned_client_gets_a_hairpin_expectation() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    let (c, s) = hairpinned_login(&mut table, &mut maps);
    let out = table.on_packet(
        PuntReason::HairpinFromClient as u8,
        &segment(
            INSIDE_CLIENT,
            (PUBLIC, 21),
            c,
            s,
            PSH_ACK,
            b"PORT 10,0,0,5,160,1\r\n",
            vec![],
        ),
        0,
        &mut maps,
    );
    let sent = TcpPacket::parse(&out[0].bytes).unwrap();
    assert_eq!(
        (sent.src, sent.src_port, sent.dst, sent.dst_port),
        (PUBLIC, 41000, SERVER, 21)
    );
    assert_eq!(sent.payload, b"PORT 203,0,113,1,160,1\r\n");
    let key = ExpectationKey {
        endpoint: data_endpoint(PUBLIC, 40961),
        peer: SERVER.octets(),
    };
    let entry = maps.expectations[&key];
    assert_eq!(entry.kind, ExpectationKind::HairpinToClient as u8);
    assert_eq!(entry.target.socket(), SocketAddrV4::new(INSIDE, 40961));
    assert_eq!(entry.source, PUBLIC.octets());
    // The port is the ALG's: filtering never admits anything else to it.
    assert_eq!(
        maps.by_public[&data_endpoint(PUBLIC, 40961)].flags,
        endpoint_flags::ALG_CLAIM
    );
}

/// The announcement must still name its sender: a hairpinned client's `PORT` naming the
/// server (or any address but its own) opens nothing.
#[test]
fn a_hairpinned_client_cannot_bounce() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    let (c, s) = hairpinned_login(&mut table, &mut maps);
    let line = b"PORT 10,0,0,2,160,1\r\n";
    let out = table.on_packet(
        PuntReason::HairpinFromClient as u8,
        &segment(INSIDE_CLIENT, (PUBLIC, 21), c, s, PSH_ACK, line, vec![]),
        0,
        &mut maps,
    );
    assert!(maps.expectations.is_empty());
    assert_eq!(
        table.stats().violations_by_check[check_index(Check::Bounce)],
        1
    );
    // Rejected (the default action): the server never sees it, the client gets the refusal.
    let to_server = out
        .iter()
        .map(|o| TcpPacket::parse(&o.bytes).unwrap())
        .filter(|p| p.dst == SERVER)
        .any(|p| !p.payload.is_empty());
    assert!(!to_server);
}

/// The published server's own policy applies to its hairpinned clients.
#[test]
fn the_publish_policy_applies_to_hairpinned_clients() {
    let mut settings = settings();
    settings.published_policies.insert(
        SocketAddrV4::new(PUBLIC, 21),
        Arc::new(Policy {
            deny_commands: vec!["DELE".into()],
            ..Policy::default()
        }),
    );
    let mut table = ControlTable::new(settings, 7);
    let mut maps = MemoryMaps::default();
    let (c, s) = hairpinned_login(&mut table, &mut maps);
    let out = table.on_packet(
        PuntReason::HairpinFromClient as u8,
        &segment(
            INSIDE_CLIENT,
            (PUBLIC, 21),
            c,
            s,
            PSH_ACK,
            b"DELE file\r\n",
            vec![],
        ),
        0,
        &mut maps,
    );
    assert_eq!(
        table.stats().violations_by_check[check_index(Check::DeniedCommand)],
        1
    );
    let reply = out
        .iter()
        .map(|o| TcpPacket::parse(&o.bytes).unwrap())
        .find(|p| p.dst == INSIDE && !p.payload.is_empty())
        .expect("the gateway's reply to the client");
    assert!(reply.payload.starts_with(b"502"), "{:?}", reply.payload);
    assert_eq!((reply.src, reply.src_port), (PUBLIC, 21));
}

/// Without a masquerade there is no hairpinning: such a SYN opens nothing.
#[test]
fn no_hairpin_session_without_a_masquerade() {
    let mut settings = settings();
    settings.masquerade = None;
    let mut table = ControlTable::new(settings, 7);
    let mut maps = MemoryMaps::default();
    let out = table.on_packet(
        PuntReason::HairpinFromClient as u8,
        &segment(
            INSIDE_CLIENT,
            (PUBLIC, 21),
            1,
            0,
            SYN,
            b"",
            MSS_1460.to_vec(),
        ),
        0,
        &mut maps,
    );
    assert!(out.is_empty());
    assert!(table.connections(0).is_empty());
    assert_eq!(table.stats().drop_no_port, 1);
}

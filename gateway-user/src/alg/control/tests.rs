use std::sync::Arc;

use gateway_common::{ExpectationKind, endpoint_flags};
use gateway_ftp::{policy::Policy, session::flags};

use super::*;

const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SECOND: u64 = 1_000_000_000;

fn settings() -> AlgSettings {
    AlgSettings {
        published: HashMap::from([(SocketAddrV4::new(PUBLIC, 21), SocketAddrV4::new(SERVER, 21))]),
        reserved: HashSet::from([SocketAddrV4::new(PUBLIC, 21)]),
        masquerade: Some(MasqueradeSettings {
            networks: vec!["10.0.0.0/24".parse().unwrap()],
            addresses: vec![PUBLIC],
            ports: 1024..=65535,
        }),
        data_ports: 1024..=65535,
        expectation_timeout_ns: 60 * SECOND,
        policy: Arc::new(Policy::default()),
        published_policies: HashMap::new(),
        established_timeout_ns: 7440 * SECOND,
        transitory_timeout_ns: 240 * SECOND,
        forward_pure_acks: true,
    }
}

fn segment(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
    options: Vec<u8>,
) -> Vec<u8> {
    TcpPacket {
        src: src.0,
        dst: dst.0,
        tos: 0,
        id: 1,
        ttl: 64,
        dont_fragment: true,
        src_port: src.1,
        dst_port: dst.1,
        seq,
        ack,
        flags,
        window: 64240,
        urgent: 0,
        options,
        payload: payload.to_vec(),
    }
    .build()
}

const SYN: u8 = flags::SYN;
const SYN_ACK: u8 = flags::SYN | flags::ACK;
const ACK: u8 = flags::ACK;
const PSH_ACK: u8 = flags::ACK | flags::PSH;
const MSS_1460: [u8; 4] = [2, 4, 0x05, 0xb4];

/// Handshake of a published-server control connection: client 40000 -> public:21.
fn published_handshake(table: &mut ControlTable, maps: &mut MemoryMaps) {
    let client = (CLIENT, 40000);
    let out = table.on_packet(
        PuntReason::PublishedFromClient as u8,
        &segment(client, (PUBLIC, 21), 100, 0, SYN, b"", MSS_1460.to_vec()),
        0,
        maps,
    );
    assert_eq!(out.len(), 1);
    let syn = TcpPacket::parse(&out[0].bytes).unwrap();
    assert_eq!((syn.src, syn.dst, syn.dst_port), (CLIENT, SERVER, 21));
    assert_eq!(syn.ttl, 63);
    assert_eq!(out[0].dst, SERVER);
    let out = table.on_packet(
        PuntReason::PublishedFromServer as u8,
        &segment(
            (SERVER, 21),
            client,
            500,
            101,
            SYN_ACK,
            b"",
            MSS_1460.to_vec(),
        ),
        0,
        maps,
    );
    let syn_ack = TcpPacket::parse(&out[0].bytes).unwrap();
    assert_eq!(
        (syn_ack.src, syn_ack.src_port, syn_ack.dst),
        (PUBLIC, 21, CLIENT)
    );
    table.on_packet(
        PuntReason::PublishedFromClient as u8,
        &segment(client, (PUBLIC, 21), 101, 501, ACK, b"", vec![]),
        0,
        maps,
    );
}

#[test]
fn passive_reply_of_a_published_server_is_rewritten_after_its_expectation() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    published_handshake(&mut table, &mut maps);
    let reply = b"227 Entering Passive Mode (10,0,0,2,195,80).\r\n";
    let out = table.on_packet(
        PuntReason::PublishedFromServer as u8,
        &segment(
            (SERVER, 21),
            (CLIENT, 40000),
            501,
            101,
            PSH_ACK,
            reply,
            vec![],
        ),
        SECOND,
        &mut maps,
    );
    assert_eq!(out.len(), 1);
    let sent = TcpPacket::parse(&out[0].bytes).unwrap();
    assert_eq!(
        sent.payload,
        b"227 Entering Passive Mode (203,0,113,1,195,80).\r\n"
    );
    // The expectation was in the map before the packet existed, and the port was claimed.
    assert_eq!(
        maps.log,
        vec!["claim 203.0.113.1:50000", "expect 203.0.113.1:50000"]
    );
    let key = ExpectationKey {
        endpoint: Endpoint::new(PUBLIC.octets(), 50000u16.to_be_bytes(), IPPROTO_TCP),
        peer: CLIENT.octets(),
    };
    let entry = maps.expectations[&key];
    assert_eq!(entry.target.socket(), SocketAddrV4::new(SERVER, 50000));
    assert_eq!(entry.kind, ExpectationKind::Inbound as u8);
    assert_eq!(entry.expires_ns, 61 * SECOND);
    // The line grew by 3 bytes (46 to 49): the client's ACK of it is mapped back for the server.
    let out = table.on_packet(
        PuntReason::PublishedFromClient as u8,
        &segment(
            (CLIENT, 40000),
            (PUBLIC, 21),
            101,
            501 + 49,
            ACK,
            b"",
            vec![],
        ),
        SECOND,
        &mut maps,
    );
    assert_eq!(TcpPacket::parse(&out[0].bytes).unwrap().ack, 501 + 46);
    // While the expectation is pending, the port is held against the sweep.
    let port = Endpoint::new(PUBLIC.octets(), 50000u16.to_be_bytes(), IPPROTO_TCP);
    assert!(table.held_endpoints(2 * SECOND).contains(&port));
    assert!(!table.held_endpoints(62 * SECOND).contains(&port));
}

#[test]
fn a_taken_data_port_is_replaced_by_a_free_one() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    maps.by_public.insert(
        Endpoint::new(PUBLIC.octets(), 50000u16.to_be_bytes(), IPPROTO_TCP),
        Endpoint::default(),
    );
    published_handshake(&mut table, &mut maps);
    let out = table.on_packet(
        PuntReason::PublishedFromServer as u8,
        &segment(
            (SERVER, 21),
            (CLIENT, 40000),
            501,
            101,
            PSH_ACK,
            b"229 Entering Extended Passive Mode (|||50000|)\r\n",
            vec![],
        ),
        SECOND,
        &mut maps,
    );
    let text = String::from_utf8(TcpPacket::parse(&out[0].bytes).unwrap().payload).unwrap();
    let port: u16 = text
        .split("|||")
        .nth(1)
        .and_then(|rest| rest.split('|').next())
        .and_then(|port| port.parse().ok())
        .unwrap();
    assert_ne!(port, 50000);
    let claimed = Endpoint::new(PUBLIC.octets(), port.to_be_bytes(), IPPROTO_TCP);
    assert_eq!(maps.by_public[&claimed].flags, endpoint_flags::ALG_CLAIM);
}

#[test]
fn masqueraded_client_gets_a_mapping_and_its_port_command_an_expectation() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    let inside = (Ipv4Addr::new(10, 0, 0, 5), 41000);
    let server = (Ipv4Addr::new(198, 51, 100, 7), 21);
    let out = table.on_packet(
        PuntReason::MasqueradeFromClient as u8,
        &segment(inside, server, 1, 0, SYN, b"", MSS_1460.to_vec()),
        0,
        &mut maps,
    );
    let syn = TcpPacket::parse(&out[0].bytes).unwrap();
    assert_eq!((syn.src, syn.src_port, syn.dst), (PUBLIC, 41000, server.0));
    let private = Endpoint::new([10, 0, 0, 5], 41000u16.to_be_bytes(), IPPROTO_TCP);
    assert_eq!(
        maps.by_private[&private].socket(),
        SocketAddrV4::new(PUBLIC, 41000)
    );
    // The server's reply arrives at the public mapping.
    let out = table.on_packet(
        PuntReason::MasqueradeFromServer as u8,
        &segment(
            server,
            (PUBLIC, 41000),
            9,
            2,
            SYN_ACK,
            b"",
            MSS_1460.to_vec(),
        ),
        0,
        &mut maps,
    );
    let syn_ack = TcpPacket::parse(&out[0].bytes).unwrap();
    assert_eq!((syn_ack.dst, syn_ack.dst_port), (inside.0, 41000));
    // Greeting and login, as the policy's state machine wants them before PORT.
    let (mut c, mut s) = (2u32, 10u32);
    for (reply, command) in [
        ("220 hello\r\n", "USER anonymous\r\n"),
        ("331 password\r\n", "PASS x@\r\n"),
        ("230 ok\r\n", ""),
    ] {
        table.on_packet(
            PuntReason::MasqueradeFromServer as u8,
            &segment(
                server,
                (PUBLIC, 41000),
                s,
                c,
                PSH_ACK,
                reply.as_bytes(),
                vec![],
            ),
            0,
            &mut maps,
        );
        s += reply.len() as u32;
        if !command.is_empty() {
            table.on_packet(
                PuntReason::MasqueradeFromClient as u8,
                &segment(inside, server, c, s, PSH_ACK, command.as_bytes(), vec![]),
                0,
                &mut maps,
            );
            c += command.len() as u32;
        }
    }
    let out = table.on_packet(
        PuntReason::MasqueradeFromClient as u8,
        &segment(
            inside,
            server,
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
    assert_eq!(sent.payload, b"PORT 203,0,113,1,160,1\r\n");
    let key = ExpectationKey {
        endpoint: Endpoint::new(PUBLIC.octets(), 40961u16.to_be_bytes(), IPPROTO_TCP),
        peer: server.0.octets(),
    };
    assert_eq!(
        maps.expectations[&key].target.socket(),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 40961)
    );
}

#[test]
fn segments_of_unknown_connections_are_dropped() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    let out = table.on_packet(
        PuntReason::PublishedFromClient as u8,
        &segment(
            (CLIENT, 40000),
            (PUBLIC, 21),
            101,
            501,
            PSH_ACK,
            b"PASV\r\n",
            vec![],
        ),
        0,
        &mut maps,
    );
    assert!(out.is_empty());
    // A server cannot open a control connection.
    let out = table.on_packet(
        PuntReason::PublishedFromServer as u8,
        &segment((SERVER, 21), (CLIENT, 40000), 1, 0, SYN, b"", vec![]),
        0,
        &mut maps,
    );
    assert!(out.is_empty());
    let mut corrupt = segment((CLIENT, 40000), (PUBLIC, 21), 1, 0, SYN, b"", vec![]);
    corrupt[30] ^= 1;
    assert!(
        table
            .on_packet(
                PuntReason::PublishedFromClient as u8,
                &corrupt,
                0,
                &mut maps
            )
            .is_empty()
    );
    let stats = table.stats();
    assert_eq!((stats.drop_no_session, stats.drop_malformed), (2, 1));
    assert!(table.connections(0).is_empty());
}

#[test]
fn a_super_packet_leaves_cut_to_the_receivers_mss() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    published_handshake(&mut table, &mut maps);
    let mut payload = Vec::new();
    while payload.len() < 4000 {
        payload.extend_from_slice(b"NOOP\r\n");
    }
    let out = table.on_packet(
        PuntReason::PublishedFromClient as u8,
        &segment(
            (CLIENT, 40000),
            (PUBLIC, 21),
            101,
            501,
            PSH_ACK,
            &payload,
            vec![],
        ),
        0,
        &mut maps,
    );
    assert_eq!(out.len(), 3);
    let packets: Vec<TcpPacket> = out
        .iter()
        .map(|o| TcpPacket::parse(&o.bytes).unwrap())
        .collect();
    assert!(packets.iter().all(|p| p.payload.len() <= 1460));
    assert_eq!(packets[1].seq, 101 + packets[0].payload.len() as u32);
    let joined: Vec<u8> = packets.iter().flat_map(|p| p.payload.clone()).collect();
    assert_eq!(joined, payload);
    assert_eq!(packets[0].flags & flags::PSH, 0);
    assert_eq!(packets[2].flags & flags::PSH, flags::PSH);
}

#[test]
fn a_closed_connection_goes_with_its_unused_expectations() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    session_with_passive_reply(&mut table, &mut maps);
    assert_eq!(maps.expectations.len(), 1);
    table.on_packet(
        PuntReason::PublishedFromClient as u8,
        &segment(
            (CLIENT, 40000),
            (PUBLIC, 21),
            101,
            550,
            flags::FIN | ACK,
            b"",
            vec![],
        ),
        SECOND,
        &mut maps,
    );
    table.on_packet(
        PuntReason::PublishedFromServer as u8,
        &segment(
            (SERVER, 21),
            (CLIENT, 40000),
            546,
            102,
            flags::FIN | ACK,
            b"",
            vec![],
        ),
        SECOND,
        &mut maps,
    );
    assert_eq!(table.connections(SECOND).len(), 1);
    assert!(table.connections(SECOND)[0].closed);
    // Still there during the linger (a retransmitted FIN is translated), gone after.
    assert_eq!(table.expire(5 * SECOND, &mut maps), 0);
    assert_eq!(table.expire(20 * SECOND, &mut maps), 1);
    assert!(maps.expectations.is_empty());
    assert!(table.connections(20 * SECOND).is_empty());
    assert_eq!(table.stats().sessions_closed, 1);
}

#[test]
fn a_used_expectation_releases_its_data_port() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    session_with_passive_reply(&mut table, &mut maps);
    let port = Endpoint::new(PUBLIC.octets(), 50000u16.to_be_bytes(), IPPROTO_TCP);
    table.forget_used(&mut maps);
    assert!(
        table.held_endpoints(SECOND).contains(&port),
        "still pending"
    );
    // The data connection's SYN used it: the fast path removed it.
    maps.expectations.clear();
    table.forget_used(&mut maps);
    assert!(!table.held_endpoints(SECOND).contains(&port));
}

/// The client resets its control connection from `port`.
fn rst_from(table: &mut ControlTable, maps: &mut MemoryMaps, port: u16) {
    table.on_packet(
        PuntReason::PublishedFromClient as u8,
        &segment(
            (CLIENT, port),
            (PUBLIC, 21),
            101,
            0,
            flags::RST,
            b"",
            vec![],
        ),
        0,
        maps,
    );
}

/// Opens a published control connection from `port`; true if the gateway let its SYN through
/// (to the server; a refusal answers the client instead).
fn syn_from(table: &mut ControlTable, maps: &mut MemoryMaps, port: u16) -> bool {
    table
        .on_packet(
            PuntReason::PublishedFromClient as u8,
            &segment(
                (CLIENT, port),
                (PUBLIC, 21),
                100,
                0,
                SYN,
                b"",
                MSS_1460.to_vec(),
            ),
            0,
            maps,
        )
        .iter()
        .any(|out| out.dst == SERVER)
}

/// A published control session with an announced data connection: more state than a SYN.
fn session_with_passive_reply(table: &mut ControlTable, maps: &mut MemoryMaps) {
    published_handshake(table, maps);
    table.on_packet(
        PuntReason::PublishedFromServer as u8,
        &segment(
            (SERVER, 21),
            (CLIENT, 40000),
            501,
            101,
            PSH_ACK,
            b"227 Entering Passive Mode (10,0,0,2,195,80)\r\n",
            vec![],
        ),
        0,
        maps,
    );
}

/// A reply the gateway sends in the server's name (a refused command) has no sender that
/// would retransmit it: the table sends it again on the resend timer, from the server's public
/// endpoint, until the client acknowledges it.
#[test]
fn a_refusal_the_gateway_sent_is_resent_until_the_client_acknowledges_it() {
    let mut table = ControlTable::new(settings(), 1);
    let mut maps = MemoryMaps::default();
    published_handshake(&mut table, &mut maps);
    let client = (CLIENT, 40000);
    let greeting = b"220 hi\r\n";
    table.on_packet(
        PuntReason::PublishedFromServer as u8,
        &segment((SERVER, 21), client, 501, 101, PSH_ACK, greeting, vec![]),
        0,
        &mut maps,
    );
    // RETR before login: refused, answered by the gateway.
    let out = table.on_packet(
        PuntReason::PublishedFromClient as u8,
        &segment(
            client,
            (PUBLIC, 21),
            101,
            509,
            PSH_ACK,
            b"RETR x\r\n",
            vec![],
        ),
        0,
        &mut maps,
    );
    let refusal = Check::OutOfState.reject_reply().as_bytes();
    let sent: Vec<TcpPacket> = out
        .iter()
        .filter_map(|out| TcpPacket::parse(&out.bytes).ok())
        .filter(|packet| packet.payload == refusal)
        .collect();
    assert_eq!(sent.len(), 1, "the refusal goes to the client");
    let first = &sent[0];
    assert_eq!((first.src, first.src_port, first.dst), (PUBLIC, 21, CLIENT));
    // Lost on the way: the timer sends the same bytes at the same place.
    for _ in 0..2 {
        let again = table.resend_owed();
        assert_eq!(again.len(), 1);
        let packet = TcpPacket::parse(&again[0].bytes).expect("a valid packet");
        assert_eq!(packet.payload, refusal);
        assert_eq!(
            (packet.seq, packet.src, packet.dst),
            (first.seq, PUBLIC, CLIENT)
        );
    }
    // The client acknowledges it: nothing is owed any more.
    let acked = first.seq.wrapping_add(refusal.len() as u32);
    table.on_packet(
        PuntReason::PublishedFromClient as u8,
        &segment(client, (PUBLIC, 21), 109, acked, ACK, b"", vec![]),
        0,
        &mut maps,
    );
    assert!(table.resend_owed().is_empty());
    assert_eq!(table.stats().resent, 2);
}

mod acks;
mod hairpin;
mod held;
mod limits;
mod state;

//! The pure-ACK entries the table keeps for the fast path (`CONTROL_ACKS`): written once the
//! handshake is over, moved with every rewrite before the rewritten segment leaves, withdrawn
//! while the session must see the ACKs, removed with the connection, and adopted after a
//! restore.

use gateway_common::{Rewrite, control_ack::SeqShift};

use super::*;

fn client_key() -> FlowKey {
    key(
        SocketAddrV4::new(CLIENT, 40000),
        SocketAddrV4::new(PUBLIC, 21),
    )
}

fn server_key() -> FlowKey {
    key(
        SocketAddrV4::new(SERVER, 21),
        SocketAddrV4::new(CLIENT, 40000),
    )
}

/// Timestamps as Linux sends them (NOP, NOP, TS) with this TSval.
fn timestamps(tsval: u32) -> Vec<u8> {
    let mut option = vec![1, 1, 8, 10];
    option.extend_from_slice(&tsval.to_be_bytes());
    option.extend_from_slice(&[0, 0, 0, 0]);
    option
}

#[test]
fn a_published_sessions_acks_go_to_the_fast_path_with_their_translation() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    published_handshake(&mut table, &mut maps);
    let from_client = maps.control_acks[&client_key()];
    assert_eq!(from_client.rewrite, Rewrite::Destination as u8);
    assert_eq!(
        (from_client.addr, from_client.port),
        (SERVER.octets(), 21u16.to_be_bytes())
    );
    assert_eq!(from_client.seq, SeqShift::uniform(0));
    assert_eq!(from_client.ack, SeqShift::uniform(0));
    let from_server = maps.control_acks[&server_key()];
    assert_eq!(from_server.rewrite, Rewrite::Source as u8);
    assert_eq!(
        (from_server.addr, from_server.port),
        (PUBLIC.octets(), 21u16.to_be_bytes())
    );

    // The server's 227 grows by 3: written before the rewritten reply is handed out.
    let reply = b"227 Entering Passive Mode (10,0,0,2,195,80).\r\n";
    table.on_packet(
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
        0,
        &mut maps,
    );
    let end = 501 + reply.len() as u32;
    let from_client = maps.control_acks[&client_key()];
    assert_eq!(from_client.ack.map(end + 3), Some(end), "past the rewrite");
    assert_eq!(from_client.ack.map(505), None, "inside it: the agent's");
    assert_eq!(from_client.window_shrink, 3);
    let from_server = maps.control_acks[&server_key()];
    assert_eq!(from_server.seq.map(end), Some(end + 3));

    // Both FINs: the connection closes and its entries go at once (it lingers unshared).
    for (from, to, seq, ack, reason) in [
        (
            (CLIENT, 40000),
            (PUBLIC, 21),
            101,
            end + 3,
            PuntReason::PublishedFromClient,
        ),
        (
            (SERVER, 21),
            (CLIENT, 40000),
            end,
            102,
            PuntReason::PublishedFromServer,
        ),
    ] {
        table.on_packet(
            reason as u8,
            &segment(from, to, seq, ack, flags::FIN | ACK, b"", vec![]),
            0,
            &mut maps,
        );
    }
    assert!(maps.control_acks.is_empty(), "{:?}", maps.control_acks);
}

#[test]
fn a_half_line_withdraws_the_entries_until_it_is_whole_and_acknowledged() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    published_handshake(&mut table, &mut maps);
    table.on_packet(
        PuntReason::PublishedFromServer as u8,
        &segment(
            (SERVER, 21),
            (CLIENT, 40000),
            501,
            101,
            PSH_ACK,
            b"220 hi\r\n",
            vec![],
        ),
        0,
        &mut maps,
    );
    assert_eq!(maps.control_acks.len(), 2);
    table.on_packet(
        PuntReason::PublishedFromClient as u8,
        &segment(
            (CLIENT, 40000),
            (PUBLIC, 21),
            101,
            509,
            PSH_ACK,
            b"USE",
            vec![],
        ),
        0,
        &mut maps,
    );
    assert!(
        maps.control_acks.is_empty(),
        "held: the session must see the ACKs"
    );
    table.on_packet(
        PuntReason::PublishedFromClient as u8,
        &segment(
            (CLIENT, 40000),
            (PUBLIC, 21),
            104,
            509,
            PSH_ACK,
            b"R a\r\n",
            vec![],
        ),
        0,
        &mut maps,
    );
    // The server's ACK of the whole line settles what the gateway acknowledged for it.
    table.on_packet(
        PuntReason::PublishedFromServer as u8,
        &segment((SERVER, 21), (CLIENT, 40000), 509, 109, ACK, b"", vec![]),
        0,
        &mut maps,
    );
    assert_eq!(maps.control_acks.len(), 2);
}

#[test]
fn the_gateways_own_reply_is_not_older_than_the_servers_last_forwarded_ack() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    let client = (CLIENT, 40000);
    let server = (SERVER, 21);
    let punt = |table: &mut ControlTable,
                maps: &mut MemoryMaps,
                reason: PuntReason,
                bytes: Vec<u8>| { table.on_packet(reason as u8, &bytes, 0, maps) };
    punt(
        &mut table,
        &mut maps,
        PuntReason::PublishedFromClient,
        segment(
            client,
            (PUBLIC, 21),
            100,
            0,
            SYN,
            b"",
            [MSS_1460.to_vec(), timestamps(10)].concat(),
        ),
    );
    punt(
        &mut table,
        &mut maps,
        PuntReason::PublishedFromServer,
        segment(
            server,
            client,
            500,
            101,
            SYN_ACK,
            b"",
            [MSS_1460.to_vec(), timestamps(1000)].concat(),
        ),
    );
    punt(
        &mut table,
        &mut maps,
        PuntReason::PublishedFromClient,
        segment(client, (PUBLIC, 21), 101, 501, ACK, b"", timestamps(11)),
    );
    punt(
        &mut table,
        &mut maps,
        PuntReason::PublishedFromServer,
        segment(
            server,
            client,
            501,
            101,
            PSH_ACK,
            b"220 hi\r\n",
            timestamps(1001),
        ),
    );
    // The fast path forwards the server's later ACKs, the last with TSval 1500.
    let entry = maps.control_acks.get_mut(&server_key()).unwrap();
    entry.last_tsval = 1500u32.to_be_bytes();
    // A command the policy refuses before login: the gateway answers in the server's name.
    let out = punt(
        &mut table,
        &mut maps,
        PuntReason::PublishedFromClient,
        segment(
            client,
            (PUBLIC, 21),
            101,
            509,
            PSH_ACK,
            b"RETR x\r\n",
            timestamps(12),
        ),
    );
    let reply = out
        .iter()
        .map(|packet| TcpPacket::parse(&packet.bytes).unwrap())
        .find(|packet| packet.src == PUBLIC && !packet.payload.is_empty())
        .expect("the gateway's 503");
    assert!(reply.payload.starts_with(b"503"));
    assert_eq!(reply.tsval(), Some(1500));
}

#[test]
fn a_restored_table_adopts_the_entries_of_its_sessions_and_drops_the_rest() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    published_handshake(&mut table, &mut maps);
    let stale = key(
        SocketAddrV4::new(CLIENT, 41111),
        SocketAddrV4::new(PUBLIC, 21),
    );
    maps.control_acks
        .insert(stale, maps.control_acks[&client_key()]);
    maps.control_acks.remove(&server_key());
    let mut restored = ControlTable::restore(settings(), table.save(1)).unwrap();
    restored.adopt_control_acks(&mut maps);
    assert!(!maps.control_acks.contains_key(&stale), "no such session");
    assert!(maps.control_acks.contains_key(&client_key()));
    assert!(
        maps.control_acks.contains_key(&server_key()),
        "written afresh"
    );
}

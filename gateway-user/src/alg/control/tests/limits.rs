//! The per-client limit on control sessions, checked at each SYN.

use super::*;

#[test]
fn the_per_client_limit_counts_live_sessions_only() {
    let mut settings = settings();
    settings.policy = Arc::new(Policy {
        max_sessions_per_client: 2,
        ..Policy::default()
    });
    let mut table = ControlTable::new(settings.clone(), 7);
    let mut maps = MemoryMaps::default();
    assert!(syn_from(&mut table, &mut maps, 40001));
    assert!(syn_from(&mut table, &mut maps, 40002));
    assert!(!syn_from(&mut table, &mut maps, 40003), "a third one");

    // The client resets one: a place frees up although the closed one lingers.
    rst_from(&mut table, &mut maps, 40001);
    assert_eq!(table.connections.len(), 2);
    assert!(syn_from(&mut table, &mut maps, 40003));
    assert!(!syn_from(&mut table, &mut maps, 40004));

    // A restored table counts the same way.
    let mut restored = ControlTable::restore(settings, table.save(1)).unwrap();
    assert!(!syn_from(&mut restored, &mut maps, 40004));

    // Forgetting the closed one changes nothing; forgetting a live one frees its place.
    restored.expire(CLOSED_LINGER_NS + 1, &mut maps);
    assert_eq!(restored.connections.len(), 2);
    restored.expire(241 * SECOND, &mut maps);
    assert!(restored.connections.is_empty());
    assert!(restored.flows.is_empty());
    assert!(syn_from(&mut restored, &mut maps, 40005));
}

#[test]
fn a_client_beyond_its_limit_is_reset_at_once_in_the_servers_name() {
    let mut settings = settings();
    settings.policy = Arc::new(Policy {
        max_sessions_per_client: 2,
        ..Policy::default()
    });
    let mut table = ControlTable::new(settings, 7);
    let mut maps = MemoryMaps::default();
    assert!(syn_from(&mut table, &mut maps, 40001));
    assert!(syn_from(&mut table, &mut maps, 40002));

    // Published: from the public endpoint the client called.
    let out = table.on_packet(
        PuntReason::PublishedFromClient as u8,
        &segment(
            (CLIENT, 40003),
            (PUBLIC, 21),
            0xffff_ffff,
            0,
            SYN,
            b"",
            MSS_1460.to_vec(),
        ),
        0,
        &mut maps,
    );
    assert_eq!(out.len(), 1, "only the reset; nothing to the server");
    assert_eq!(out[0].dst, CLIENT);
    let reset = TcpPacket::parse(&out[0].bytes).expect("checksums valid");
    assert_eq!(
        (reset.src, reset.src_port, reset.dst, reset.dst_port),
        (PUBLIC, 21, CLIENT, 40003)
    );
    assert_eq!(reset.flags, flags::RST | flags::ACK);
    assert_eq!(
        (reset.seq, reset.ack),
        (0, 0),
        "ack = SYN's seq + 1, wrapped"
    );
    assert_eq!(table.connections.len(), 2, "no session for it");
    assert_eq!(table.flows.len(), 4, "two flows for each of the two");
    let stats = table.stats();
    assert_eq!(
        stats.violations_by_check[check_index(Check::TooManySessions)],
        1
    );
    assert_eq!(stats.sessions_opened, 2);

    // Masqueraded: from the outside server the inside client called; no mapping claimed.
    let inside = Ipv4Addr::new(10, 0, 0, 9);
    let outside = Ipv4Addr::new(198, 51, 100, 7);
    let mut opened = 0;
    let mut resets = Vec::new();
    for port in 50000..50003 {
        let out = table.on_packet(
            PuntReason::MasqueradeFromClient as u8,
            &segment(
                (inside, port),
                (outside, 21),
                1000,
                0,
                SYN,
                b"",
                MSS_1460.to_vec(),
            ),
            0,
            &mut maps,
        );
        match out.as_slice() {
            [only] if only.dst == outside => opened += 1,
            [only] if only.dst == inside => resets.push(TcpPacket::parse(&only.bytes).unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(opened, 2);
    assert_eq!(resets.len(), 1);
    assert_eq!(
        (
            resets[0].src,
            resets[0].src_port,
            resets[0].dst,
            resets[0].dst_port
        ),
        (outside, 21, inside, 50002)
    );
    assert_eq!((resets[0].seq, resets[0].ack), (0, 1001));
    assert!(
        !maps.log.iter().any(|entry| entry.contains(":50002")),
        "{:?}",
        maps.log
    );
    assert_eq!(
        table.stats().violations_by_check[check_index(Check::TooManySessions)],
        2
    );
}

#[test]
fn no_limit_when_the_limit_is_zero() {
    let mut settings = settings();
    settings.policy = Arc::new(Policy {
        max_sessions_per_client: 0,
        ..Policy::default()
    });
    let mut table = ControlTable::new(settings, 7);
    let mut maps = MemoryMaps::default();
    for port in 40000..40100 {
        assert!(syn_from(&mut table, &mut maps, port));
    }
    assert_eq!(table.stats().violations, 0);
}

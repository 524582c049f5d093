//! The control sessions in the HA sync: the store and the sync each take every change, a
//! standby holds what the active node sends (its times moved to the standby's clock) and
//! takes it over on promotion with the same edits and pure-ACK entries; a demoted node holds
//! its own aside without touching the maps.

use super::*;

/// What travels: a part as the sync encodes it (JSON) and the standby reads it.
fn carried(part: &SavedChanges) -> SavedChanges {
    serde_json::from_slice(&serde_json::to_vec(part).unwrap()).unwrap()
}

fn connections_json(table: &mut ControlTable) -> serde_json::Value {
    let mut value = serde_json::to_value(table.save(0)).unwrap();
    if let Some(connections) = value["connections"].as_array_mut() {
        connections.sort_by_key(|connection| connection["id"].as_u64());
    }
    value["connections"].take()
}

#[test]
fn the_store_and_the_sync_each_take_every_change() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    table.track_changes(ChangeLog::Store);
    table.track_changes(ChangeLog::Sync);
    assert!(syn_from(&mut table, &mut maps, 40001));
    assert!(syn_from(&mut table, &mut maps, 40002));
    let store = table.take_changes(ChangeLog::Store, 1).unwrap();
    assert_eq!(store.records(), 2);
    assert!(table.take_changes(ChangeLog::Store, 1).is_none());
    // The store took its changes; the sync's are still there.
    rst_from(&mut table, &mut maps, 40001);
    // A snapshot of the store clears only the store's log.
    table.save(2);
    assert!(table.take_changes(ChangeLog::Store, 2).is_none());
    let sync = table.take_changes(ChangeLog::Sync, 0).unwrap();
    assert_eq!(
        sync.records(),
        2,
        "both connections, one of them reset since"
    );
    table.expire(CLOSED_LINGER_NS + 1, &mut maps);
    assert_eq!(
        table.take_changes(ChangeLog::Store, 2).unwrap().records(),
        1
    );
    assert_eq!(table.take_changes(ChangeLog::Sync, 0).unwrap().records(), 1);
    // Untracked (no standby): nothing is kept for it.
    table.untrack_changes(ChangeLog::Sync);
    assert!(syn_from(&mut table, &mut maps, 40003));
    assert!(table.changes.log(ChangeLog::Sync).is_none());
    assert_eq!(
        table.take_changes(ChangeLog::Store, 2).unwrap().records(),
        1
    );
}

#[test]
fn a_standby_takes_over_the_sessions_with_their_edits_and_pure_acks() {
    let mut active = ControlTable::new(settings(), 7);
    let mut active_maps = MemoryMaps::default();
    assert!(syn_from(&mut active, &mut active_maps, 40001));
    let parts = active.sync_snapshot(1);
    assert_eq!(parts.len(), 1);
    let mut held = HeldTable::default();
    for part in &parts {
        held.apply(carried(part), 0);
    }
    // After the snapshot: a session whose 227 was rewritten (edits, an expectation).
    session_with_passive_reply(&mut active, &mut active_maps);
    let changes = active.take_changes(ChangeLog::Sync, 0).unwrap();
    for part in changes.split(1) {
        held.apply(carried(&part), 0);
    }
    assert_eq!(held.len(), 2);

    let mut standby = ControlTable::new(settings(), 9);
    let mut standby_maps = MemoryMaps::default();
    assert_eq!(standby.take_over(held), Some(2));
    standby.adopt_control_acks(&mut standby_maps);
    assert_eq!(
        connections_json(&mut standby),
        connections_json(&mut active)
    );
    assert_eq!(standby_maps.control_acks, active_maps.control_acks);
    assert_eq!(standby_maps.control_acks.len(), 2);

    // The next segment of the session is mapped with the synced edits: the client's ACK of
    // the rewritten 227 (3 bytes longer) leaves with the server's numbers on both.
    let ack_of_reply = |table: &mut ControlTable, maps: &mut MemoryMaps| {
        table.on_packet(
            PuntReason::PublishedFromClient as u8,
            &segment(
                (CLIENT, 40000),
                (PUBLIC, 21),
                101,
                501 + 51,
                PSH_ACK,
                b"LIST\r\n",
                vec![],
            ),
            SECOND,
            maps,
        )
    };
    let from_active = ack_of_reply(&mut active, &mut active_maps);
    let from_standby = ack_of_reply(&mut standby, &mut standby_maps);
    assert!(!from_active.is_empty());
    assert_eq!(from_standby, from_active);
}

#[test]
fn held_times_move_to_the_standbys_clock() {
    let mut active = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    session_with_passive_reply(&mut active, &mut maps);
    let mut held = HeldTable::default();
    for part in active.sync_snapshot(16) {
        held.apply(carried(&part), 5 * SECOND as i64);
    }
    let mut standby = ControlTable::new(settings(), 9);
    standby.take_over(held).unwrap();
    let now = 5 * SECOND;
    let (before, after) = (&active.connections(0)[0], &standby.connections(now)[0]);
    assert_eq!(after.age_ns, before.age_ns);
    assert_eq!(after.expectations, before.expectations);
    assert!(!after.expectations.is_empty());
    // Far from its timeouts on the standby's clock too.
    assert_eq!(standby.expire(now, &mut MemoryMaps::default()), 0);
}

#[test]
fn a_demoted_table_holds_its_sessions_aside_without_touching_the_maps() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    table.track_changes(ChangeLog::Sync);
    session_with_passive_reply(&mut table, &mut maps);
    let before = connections_json(&mut table);
    let acks = maps.control_acks.clone();
    let expectations = maps.expectations.clone();
    let held = table.hold_aside();
    assert_eq!(held.len(), 1);
    assert!(table.connections(0).is_empty());
    assert!(table.changes.log(ChangeLog::Sync).is_none());
    assert_eq!(maps.control_acks, acks);
    assert_eq!(maps.expectations, expectations);
    // Nothing acts on them: no expiry, no resend.
    assert_eq!(table.expire(u64::MAX / 2, &mut maps), 0);
    assert!(table.resend_owed().is_empty());
    assert_eq!(maps.expectations, expectations);
    // Promoted again with nothing newer: they come back as they were.
    assert_eq!(table.take_over(held), Some(1));
    assert_eq!(connections_json(&mut table), before);
    // Nothing ever received: the table stays as it is.
    assert_eq!(table.take_over(HeldTable::default()), None);
    assert_eq!(connections_json(&mut table), before);
}

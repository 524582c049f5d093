//! The table saved and restored: snapshot, journal, generations, and saves of the previous
//! format version.

use super::*;

/// The table as a save would write it, connections in id order (a map's order is arbitrary).
fn saved_json(table: &mut ControlTable) -> serde_json::Value {
    let mut value = serde_json::to_value(table.save(0)).unwrap();
    if let Some(connections) = value["connections"].as_array_mut() {
        connections.sort_by_key(|connection| connection["id"].as_u64());
    }
    value
}

fn state_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("ftp-state.json")
}

#[test]
fn the_journal_brings_back_what_a_full_save_holds() {
    use crate::alg::store::{self, StateStore};
    let path = state_path("replay");
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    let mut store = StateStore::create(&path, &mut table).unwrap();
    session_with_passive_reply(&mut table, &mut maps);
    assert!(syn_from(&mut table, &mut maps, 40001));
    assert!(syn_from(&mut table, &mut maps, 40002));
    assert!(store.save_changes(&mut table).unwrap() > 0);
    // One reset (changed), one forgotten (removed), then nothing at all.
    rst_from(&mut table, &mut maps, 40001);
    store.save_changes(&mut table).unwrap();
    table.expire(CLOSED_LINGER_NS + 1, &mut maps);
    store.save_changes(&mut table).unwrap();
    assert_eq!(
        store.save_changes(&mut table).unwrap(),
        0,
        "nothing changed"
    );

    let loaded = store::load(&path).unwrap().expect("a save");
    let mut restored = ControlTable::restore(settings(), loaded).unwrap();
    assert_eq!(restored.connections.len(), 2);
    assert_eq!(saved_json(&mut restored), saved_json(&mut table));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn a_save_after_a_batch_costs_what_the_batch_changed() {
    use crate::alg::store::StateStore;
    let path = state_path("cost");
    let mut settings = settings();
    settings.policy = Arc::new(Policy {
        max_sessions_per_client: 1000,
        ..Policy::default()
    });
    let mut table = ControlTable::new(settings, 7);
    let mut maps = MemoryMaps::default();
    let mut store = StateStore::create(&path, &mut table).unwrap();
    for port in 41000..41300 {
        assert!(syn_from(&mut table, &mut maps, port));
    }
    let all = store.save_changes(&mut table).unwrap();
    // The next segment of one of them.
    rst_from(&mut table, &mut maps, 41000);
    let one = store.save_changes(&mut table).unwrap();
    assert!(
        one > 0 && one * 100 < all,
        "{one} bytes for one session, {all} for 300"
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn replay_stops_at_a_cut_line_and_skips_an_older_generation() {
    use crate::alg::store::{self, StateStore};
    let path = state_path("generations");
    let journal = std::path::PathBuf::from(format!("{}.journal", path.display()));
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    let mut store = StateStore::create(&path, &mut table).unwrap();
    assert!(syn_from(&mut table, &mut maps, 40001));
    store.save_changes(&mut table).unwrap();
    let old_generation = std::fs::read(&journal).unwrap();

    // A new snapshot, then the old journal back (as if the truncation never happened) and a
    // change of the new generation after it.
    store.compact(&mut table).unwrap();
    std::fs::write(&journal, &old_generation).unwrap();
    assert!(syn_from(&mut table, &mut maps, 40002));
    store.save_changes(&mut table).unwrap();
    let loaded = store::load(&path).unwrap().unwrap();
    let mut restored = ControlTable::restore(settings(), loaded).unwrap();
    assert_eq!(saved_json(&mut restored), saved_json(&mut table));

    // A last line cut short by a crash: what came before it stands.
    let mut bytes = std::fs::read(&journal).unwrap();
    let whole = bytes.clone();
    assert!(syn_from(&mut table, &mut maps, 40003));
    store.save_changes(&mut table).unwrap();
    let appended = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(&appended[whole.len()..whole.len() + 40]);
    std::fs::write(&journal, &bytes).unwrap();
    let loaded = store::load(&path).unwrap().unwrap();
    let restored = ControlTable::restore(settings(), loaded).unwrap();
    assert_eq!(restored.connections.len(), 2, "the third is cut off");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn without_a_store_no_changes_are_kept() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    for port in 42000..42050 {
        assert!(syn_from(&mut table, &mut maps, port));
    }
    table.expire(241 * SECOND, &mut maps);
    assert!(table.connections.is_empty());
    assert!(table.changes.log(ChangeLog::Store).is_none());
    assert!(table.changes.log(ChangeLog::Sync).is_none());
    // Once tracked, they are.
    table.track_changes(ChangeLog::Store);
    assert!(syn_from(&mut table, &mut maps, 42050));
    assert_eq!(
        table.changes.log(ChangeLog::Store).unwrap().changed.len(),
        1
    );
    assert!(table.changes.log(ChangeLog::Sync).is_none());
}

/// A save written by version 2 of the format (as the agent before `Connection` was saved as it
/// is wrote it, each session with a copy of its policy), and the table it held.
const V2_SNAPSHOT: &str = include_str!("v2-state.json");
const V2_JOURNAL: &str = include_str!("v2-state.json.journal");
const V2_TABLE: &str = include_str!("v2-state-expected.json");

/// `value` as this version saves it: without the fields version 2 had and this one does not
/// (each session's `policy`, and the `max_line` that is the policy's; each stream's
/// `candidates`: every line is judged whole now).
fn without_policies(mut value: serde_json::Value) -> serde_json::Value {
    for connection in value["connections"].as_array_mut().unwrap() {
        let core = connection["core"].as_object_mut().unwrap();
        core.remove("policy");
        core.remove("max_line");
        for stream in core["streams"].as_array_mut().unwrap() {
            if let Some(stream) = stream.as_object_mut() {
                stream.remove("candidates");
            }
        }
    }
    value
}

#[test]
fn a_save_of_the_previous_version_is_restored_under_the_policy_now_in_force() {
    use crate::alg::store;
    let path = state_path("v2");
    std::fs::write(&path, V2_SNAPSHOT).unwrap();
    std::fs::write(format!("{}.journal", path.display()), V2_JOURNAL).unwrap();
    // The save's sessions had `deny_commands = ["SITE"]` and `max_line = 300`; the
    // configuration now denies the user `bob` instead.
    let mut settings = settings();
    settings.policy = Arc::new(Policy {
        deny_users: vec!["bob".into()],
        ..Policy::default()
    });
    let loaded = store::load(&path).unwrap().expect("a save");
    let mut restored = ControlTable::restore(settings.clone(), loaded).expect("version 2 read");

    // Everything but the policy came back as it was.
    let mut expected = without_policies(serde_json::from_str(V2_TABLE).unwrap());
    expected["version"] = 3.into();
    assert_eq!(saved_json(&mut restored), expected);
    for connection in restored.connections.values() {
        assert!(Arc::ptr_eq(&connection.policy, &settings.policy));
    }
    assert_eq!(
        restored.connections(0).iter().filter(|c| c.closed).count(),
        1
    );
    assert_eq!(
        restored.held_endpoints(0).len(),
        1,
        "the announced data port"
    );

    // The session carries on (its sequence edit: the server's 45 bytes reached the client as
    // 48) under the policy now in force.
    let mut maps = MemoryMaps::default();
    let out = restored.on_packet(
        PuntReason::PublishedFromClient as u8,
        &segment(
            (CLIENT, 40000),
            (PUBLIC, 21),
            101,
            549,
            PSH_ACK,
            b"USER bob\r\n",
            vec![],
        ),
        SECOND,
        &mut maps,
    );
    assert_eq!(restored.stats().violations, 1, "bob is denied now");
    let reply = out
        .iter()
        .map(|out| TcpPacket::parse(&out.bytes).unwrap())
        .find(|packet| packet.dst == CLIENT)
        .expect("a refusal to the client");
    assert!(reply.payload.starts_with(b"530"), "{:?}", reply.payload);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn saves_hold_no_policy_and_a_restore_gives_each_session_its_servers() {
    let mut settings = settings();
    settings.policy = Arc::new(Policy {
        deny_commands: vec!["SITE".into()],
        ..Policy::default()
    });
    let mut table = ControlTable::new(settings.clone(), 7);
    let mut maps = MemoryMaps::default();
    session_with_passive_reply(&mut table, &mut maps);
    let saved = saved_json(&mut table);
    assert_eq!(saved, without_policies(saved.clone()));
    assert!(!saved.to_string().contains("SITE"));

    // The published server has a policy of its own now.
    let own = Arc::new(Policy {
        max_pending_expectations: 1,
        ..Policy::default()
    });
    settings
        .published_policies
        .insert(SocketAddrV4::new(PUBLIC, 21), own.clone());
    let restored = ControlTable::restore(settings, table.save(1)).unwrap();
    assert!(Arc::ptr_eq(&restored.connections[&1].policy, &own));
}

#[test]
fn an_unreadable_session_costs_only_itself() {
    let mut table = ControlTable::new(settings(), 7);
    let mut maps = MemoryMaps::default();
    assert!(syn_from(&mut table, &mut maps, 40001));
    assert!(syn_from(&mut table, &mut maps, 40002));
    let mut snapshot = saved_json(&mut table);
    snapshot["connections"][0]["mss_to_client"] = "many".into();
    let mut saved: SavedTable = serde_json::from_value(snapshot).unwrap();
    let restored = ControlTable::restore(settings(), saved).unwrap();
    assert_eq!(restored.connections.keys().collect::<Vec<_>>(), [&2]);

    // In the journal: the older copy of the session does not stand in for it.
    table.track_changes(ChangeLog::Store);
    rst_from(&mut table, &mut maps, 40002);
    let mut changes =
        serde_json::to_value(table.take_changes(ChangeLog::Store, 0).unwrap()).unwrap();
    changes["changed"][0]["reset"] = 3.into();
    saved = serde_json::from_value(saved_json(&mut table)).unwrap();
    saved.apply(serde_json::from_value(changes).unwrap());
    let restored = ControlTable::restore(settings(), saved).unwrap();
    assert_eq!(restored.connections.keys().collect::<Vec<_>>(), [&1]);
}

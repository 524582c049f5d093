//! How the active node finds what changed in its maps, and what it sent last. On most
//! ticks only the entries named as changed are read ([`Walker::changed`]: the fast path's
//! events and the agent's own writes, see `dataplane::sync`), so a tick costs in proportion
//! to the changes. The whole tables are walked and compared ([`Walker::walk`]) for a
//! snapshot, when events were lost, and every [`RECONCILE_INTERVAL`] besides: what no event
//! names (an entry the kernel's LRU evicted) is set right then.
//!
//! Timestamps are refreshed coarsely: an entry whose only change is its last-seen time (and
//! its packet counters) is sent again once that time has moved [`REFRESH_NS`], not on every
//! packet.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use crate::dataplane::sync::{SyncedEntry, SyncedKey};

use super::wire::Record;

/// How far an entry's last-seen time moves before it is sent again for that alone. The
/// standby may so believe a flow idle up to this much longer than it is: far below every
/// idle timeout.
pub const REFRESH_NS: u64 = 2_000_000_000;

/// How often the tables are walked whole even when the events tell everything.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(30);

/// What the active node sent last, entry by entry.
#[derive(Debug, Default)]
pub struct Walker {
    sent: HashMap<SyncedKey, SyncedEntry>,
}

impl Walker {
    /// The records that bring the standby from what was sent to `now` (the maps' entries as
    /// just walked); with `snapshot`, all of them, between snapshot marks.
    pub fn walk(&mut self, now: Vec<SyncedEntry>, snapshot: bool) -> Vec<Record> {
        let mut records = Vec::new();
        if snapshot {
            self.sent.clear();
            records.push(Record::SnapshotBegin);
        }
        let mut seen = HashMap::with_capacity(now.len());
        for entry in now {
            let key = entry.key();
            let before = self.sent.get(&key).copied();
            let keep = match before {
                Some(before) if !worth_sending(&before, &entry) => before,
                _ => {
                    records.push(Record::Upsert(entry));
                    entry
                }
            };
            seen.insert(key, keep);
        }
        if snapshot {
            records.push(Record::SnapshotEnd);
        } else {
            records.extend(
                self.sent
                    .keys()
                    .filter(|key| !seen.contains_key(key))
                    .map(|key| Record::Remove(*key)),
            );
        }
        self.sent = seen;
        records
    }

    /// The records for the entries `keys` name (in any order, repeats allowed), each as
    /// `lookup` finds it now (`None`: gone). Claims go before the mappings and sessions
    /// that name them, as in a walk.
    pub fn changed(
        &mut self,
        keys: impl IntoIterator<Item = SyncedKey>,
        lookup: impl Fn(SyncedKey) -> Option<SyncedEntry>,
    ) -> Vec<Record> {
        let mut unique: Vec<SyncedKey> = keys
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        unique.sort_by_key(table_rank);
        let mut records = Vec::new();
        for key in unique {
            match (lookup(key), self.sent.get(&key)) {
                (Some(now), Some(before)) if !worth_sending(before, &now) => {}
                (Some(now), _) => {
                    records.push(Record::Upsert(now));
                    self.sent.insert(key, now);
                }
                (None, Some(_)) => {
                    records.push(Record::Remove(key));
                    self.sent.remove(&key);
                }
                (None, None) => {}
            }
        }
        records
    }

    /// Forgets what was sent: the next walk must be a snapshot.
    pub fn forget(&mut self) {
        self.sent.clear();
    }
}

/// Claims first, then mappings, filtering entries, sessions and expectations (the order
/// `Dataplane::synced_entries` walks in).
fn table_rank(key: &SyncedKey) -> u8 {
    match key {
        SyncedKey::ByPublic(_) => 0,
        SyncedKey::ByPrivate(_) => 1,
        SyncedKey::Peer(_) => 2,
        SyncedKey::Session(_) => 3,
        SyncedKey::Expectation(_) => 4,
    }
}

/// Whether `now` differs from what was sent (`before`) by more than a coarse refresh.
fn worth_sending(before: &SyncedEntry, now: &SyncedEntry) -> bool {
    let moved = |before: u64, now: u64| now.saturating_sub(before) >= REFRESH_NS;
    match (before, now) {
        (SyncedEntry::Session(_, before), SyncedEntry::Session(_, now)) => {
            let mut same_time = *now;
            same_time.last_seen_ns = before.last_seen_ns;
            same_time.packets = before.packets;
            same_time.bytes = before.bytes;
            same_time != *before || moved(before.last_seen_ns, now.last_seen_ns)
        }
        (SyncedEntry::Peer(_, before), SyncedEntry::Peer(_, now)) => moved(*before, *now),
        (before, now) => before != now,
    }
}

#[cfg(test)]
mod tests {
    use gateway_common::{Endpoint, FlowKey, PeerKey, Session};

    use super::*;

    fn session(last_seen_ns: u64, state: u8) -> SyncedEntry {
        SyncedEntry::Session(
            FlowKey {
                src: [10, 0, 0, 2],
                proto: 17,
                ..FlowKey::default()
            },
            Session {
                state,
                last_seen_ns,
                packets: last_seen_ns,
                ..Session::default()
            },
        )
    }

    fn claim(port: u16) -> SyncedEntry {
        let public = Endpoint::new([203, 0, 113, 1], port.to_be_bytes(), 17);
        SyncedEntry::ByPublic(public, Endpoint::new([10, 0, 0, 2], [0, 9], 17))
    }

    #[test]
    fn changes_are_sent_once_and_times_only_coarsely() {
        let mut walker = Walker::default();
        let first = walker.walk(vec![session(1_000, 0), claim(1024)], true);
        assert_eq!(
            first,
            [
                Record::SnapshotBegin,
                Record::Upsert(session(1_000, 0)),
                Record::Upsert(claim(1024)),
                Record::SnapshotEnd
            ]
        );
        // Nothing changed but a packet (last seen a little later): nothing to send.
        assert_eq!(walker.walk(vec![session(5_000, 0), claim(1024)], false), []);
        // The state changed: sent, with the time it has now.
        assert_eq!(
            walker.walk(vec![session(6_000, 1), claim(1024)], false),
            [Record::Upsert(session(6_000, 1))]
        );
        // The time moved a refresh past what was sent.
        let later = 6_000 + REFRESH_NS;
        assert_eq!(
            walker.walk(vec![session(later, 1), claim(1024)], false),
            [Record::Upsert(session(later, 1))]
        );
        // Gone, and a new one.
        assert_eq!(
            walker.walk(vec![session(later, 1), claim(1025)], false),
            [
                Record::Upsert(claim(1025)),
                Record::Remove(claim(1024).key())
            ]
        );
    }

    #[test]
    fn named_changes_are_read_as_they_are_now() {
        let mut walker = Walker::default();
        walker.walk(vec![session(1_000, 0), claim(1024)], true);
        let live = [session(3_000, 1), claim(1025)];
        let lookup = |key: SyncedKey| live.iter().copied().find(|entry| entry.key() == key);
        // A state change, a new claim named twice, a claim gone, and a key never sent
        // that is gone too.
        let records = walker.changed(
            [
                session(0, 0).key(),
                claim(1025).key(),
                claim(1025).key(),
                claim(1024).key(),
                claim(1026).key(),
            ],
            lookup,
        );
        assert_eq!(records.len(), 3, "{records:?}");
        assert!(records.contains(&Record::Upsert(session(3_000, 1))));
        assert!(records.contains(&Record::Upsert(claim(1025))));
        assert!(records.contains(&Record::Remove(claim(1024).key())));
        // Claims before sessions.
        assert!(matches!(
            records[2],
            Record::Upsert(SyncedEntry::Session(..))
        ));
        // Named again with only its time a little later: nothing to send.
        let later = [session(4_000, 1)];
        let lookup = |key: SyncedKey| later.iter().copied().find(|entry| entry.key() == key);
        assert_eq!(walker.changed([session(0, 0).key()], lookup), []);
        // A walk afterwards agrees with what the changes sent.
        assert_eq!(walker.walk(vec![session(4_000, 1), claim(1025)], false), []);
    }

    #[test]
    fn peers_are_refreshed_coarsely_and_a_forgotten_walker_resends_all() {
        let peer = PeerKey {
            public: Endpoint::new([203, 0, 113, 1], [4, 0], 17),
            remote: [203, 0, 113, 2],
        };
        let mut walker = Walker::default();
        walker.walk(vec![SyncedEntry::Peer(peer, 10)], true);
        assert_eq!(walker.walk(vec![SyncedEntry::Peer(peer, 20)], false), []);
        let moved = 10 + REFRESH_NS;
        assert_eq!(
            walker.walk(vec![SyncedEntry::Peer(peer, moved)], false),
            [Record::Upsert(SyncedEntry::Peer(peer, moved))]
        );
        walker.forget();
        assert_eq!(
            walker
                .walk(vec![SyncedEntry::Peer(peer, moved)], true)
                .len(),
            3
        );
    }
}

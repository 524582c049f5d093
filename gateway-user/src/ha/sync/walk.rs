//! How the active node finds what changed in its maps: it walks them periodically and
//! compares with what it sent last. (The fast path's own change events, through a ring
//! buffer, are the next step: a walk costs in proportion to the table, not to the changes.)
//!
//! Timestamps are refreshed coarsely: an entry whose only change is its last-seen time (and
//! its packet counters) is sent again once that time has moved [`REFRESH_NS`], not on every
//! packet.

use std::collections::HashMap;

use crate::dataplane::sync::{SyncedEntry, SyncedKey};

use super::wire::Record;

/// How far an entry's last-seen time moves before it is sent again for that alone. The
/// standby may so believe a flow idle up to this much longer than it is: far below every
/// idle timeout.
pub const REFRESH_NS: u64 = 2_000_000_000;

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

    /// Forgets what was sent: the next walk must be a snapshot.
    pub fn forget(&mut self) {
        self.sent.clear();
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

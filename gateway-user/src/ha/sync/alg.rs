//! The FTP ALG's control sessions in the state sync.
//!
//! Active side ([`AlgOutbox`]): after every batch of punted packets, and before the batch's
//! packets leave (`agent::alg`'s `save_state` comes before `send_all`), the sessions the
//! batch changed are queued for the standby as a journal record (the store's format, from
//! the sync's own change log: the store and the sync each take their own). A connection
//! that (re)starts gets a snapshot of the whole table first. So a rewritten segment that
//! moved a connection's sequence edits leaves only once the record that carries the new
//! edits is in the sync's queue.
//!
//! What remains: the queue is memory, then the socket, the link and the standby's loop. If
//! the active node dies after the segment left and before the standby applied the record
//! (usually well under a millisecond on a link of their own; at most the standby's lag), the
//! standby takes over with the connection's previous edits, and the peers then see numbers
//! off by the last rewrite's growth: that control session breaks (its data connections in
//! progress do not: their sessions are the fast path's). `alg_unacked_records` counts the
//! records in that window now (queued or sent, not yet acknowledged as applied). When the
//! queue is full the record is dropped (bounded memory), the batch's packets leave anyway
//! (a standby must not be able to stall the active node's FTP) and a snapshot follows:
//! counted in `alg_records_dropped`.
//!
//! Standby side ([`StandbyAlg`]): the records update a [`HeldTable`], which nothing acts on
//! until a promotion hands it to the ALG.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::{
    link::{Queued, Shared, lock},
    wire::{self, AlgPart, Record},
};
use crate::{
    alg::control::{ChangeLog, ControlTable, HeldTable, SavedChanges},
    dataplane::monotonic_now_ns,
};

/// Control sessions in one journal record (one frame), at most. A session is a few KiB of
/// JSON; a part larger than [`MAX_PART_BYTES`] is cut again.
const SESSIONS_PER_PART: usize = 256;
/// A part's encoded size, at most: well under the frame limit (`auth::MAX_PAYLOAD`).
const MAX_PART_BYTES: usize = super::auth::MAX_PAYLOAD / 2;

/// The ALG's way into the sync's queue (held by the agent's ALG).
pub struct AlgOutbox {
    pub(super) queue: mpsc::Sender<Queued>,
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) master: watch::Receiver<bool>,
}

impl AlgOutbox {
    /// Queues what changed in `table` for the standby (a snapshot when one is due). Called
    /// after each batch and before its packets are sent. Nothing is kept while no standby
    /// is connected (or this node is not master): the snapshot of the next connection
    /// covers it.
    pub fn send(&mut self, table: &mut ControlTable) {
        let snapshot = {
            let shared = lock(&self.shared);
            if !shared.sending || !*self.master.borrow() {
                drop(shared);
                table.untrack_changes(ChangeLog::Sync);
                return;
            }
            shared.alg_snapshot_due
        };
        let parts = if snapshot {
            table.sync_snapshot(SESSIONS_PER_PART)
        } else {
            match table.take_changes(ChangeLog::Sync, 0) {
                Some(changes) => changes.split(SESSIONS_PER_PART),
                None => return,
            }
        };
        let now_ns = monotonic_now_ns();
        let mut payloads = Vec::new();
        for part in parts {
            encode_part(part, now_ns, &mut payloads);
        }
        if snapshot {
            if let Some((first, _)) = payloads.first_mut() {
                first.splice(0..0, marker(Record::AlgSnapshotBegin));
            }
            if let Some((last, _)) = payloads.last_mut() {
                last.extend(marker(Record::AlgSnapshotEnd));
            }
        }
        let mut shared = lock(&self.shared);
        let frames = payloads.len() as u64;
        let total: u64 = payloads.iter().map(|(_, records)| records).sum();
        let mut queued_records = 0;
        for (index, (payload, records)) in payloads.into_iter().enumerate() {
            let queued = Queued {
                payload,
                alg_records: records,
            };
            if self.queue.try_send(queued).is_err() {
                // Behind: a snapshot brings the standby back, once there is room.
                shared.counters.frames_dropped += frames - index as u64;
                shared.counters.resyncs += 1;
                shared.counters.alg_records_dropped += total - queued_records;
                shared.alg_snapshot_due = true;
                drop(shared);
                table.untrack_changes(ChangeLog::Sync);
                tracing::warn!(
                    "ha sync: the queue to the standby is full; ftp session changes dropped, a snapshot follows"
                );
                return;
            }
            queued_records += records;
            shared.counters.records_sent += records;
            shared.counters.alg_records_sent += records;
            shared.alg_unacked += records;
        }
        if snapshot {
            shared.alg_snapshot_due = false;
            shared.counters.alg_snapshots_sent += 1;
        }
    }
}

fn marker(record: Record) -> Vec<u8> {
    let mut bytes = Vec::new();
    wire::encode(&[record], 0, &mut bytes);
    bytes
}

/// Appends `part` as frame payloads (cut in two until each fits) with their record counts.
fn encode_part(part: SavedChanges, now_ns: u64, out: &mut Vec<(Vec<u8>, u64)>) {
    let records = part.records();
    let json = match serde_json::to_vec(&part) {
        Ok(json) => json,
        Err(err) => {
            tracing::warn!("ha sync: cannot encode ftp sessions: {err}");
            return;
        }
    };
    if json.len() > MAX_PART_BYTES && part.connections() > 1 {
        let half = part.connections().div_ceil(2);
        for piece in part.split(half) {
            encode_part(piece, now_ns, out);
        }
        return;
    }
    if json.len() > MAX_PART_BYTES {
        tracing::warn!(
            bytes = json.len(),
            "ha sync: an ftp session too large for a frame: not synced"
        );
        return;
    }
    let mut payload = Vec::with_capacity(json.len() + 16);
    wire::encode(
        &[Record::Alg(AlgPart {
            json,
            clock_shift_ns: 0,
        })],
        now_ns,
        &mut payload,
    );
    out.push((payload, records));
}

/// The standby's copy of the active node's control sessions.
#[derive(Default)]
pub struct StandbyAlg {
    /// What the last complete snapshot and the changes after it say.
    held: HeldTable,
    /// A snapshot under way (it replaces `held` at its end).
    pending: Option<HeldTable>,
}

impl std::fmt::Debug for StandbyAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandbyAlg")
            .field("held", &self.held.len())
            .field("pending", &self.pending.as_ref().map(HeldTable::len))
            .finish()
    }
}

impl StandbyAlg {
    /// Applies one ALG record; the records it carried, or an error for one it cannot read.
    pub fn apply(&mut self, record: Record) -> Result<u64, serde_json::Error> {
        match record {
            Record::AlgSnapshotBegin => {
                self.pending = Some(HeldTable::default());
                Ok(0)
            }
            Record::AlgSnapshotEnd => {
                if let Some(table) = self.pending.take() {
                    self.held = table;
                }
                Ok(0)
            }
            Record::Alg(part) => {
                let changes: SavedChanges = serde_json::from_slice(&part.json)?;
                let into = self.pending.as_mut().unwrap_or(&mut self.held);
                Ok(into.apply(changes, part.clock_shift_ns))
            }
            _ => Ok(0),
        }
    }

    /// The connection went: a snapshot it left half done is not one (the sessions held
    /// before it stay).
    pub fn reset(&mut self) {
        self.pending = None;
    }

    /// Sessions held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// What a promotion takes over.
    pub fn take(&mut self) -> HeldTable {
        self.pending = None;
        std::mem::take(&mut self.held)
    }

    /// A demoted node's own sessions, held until the new active node's snapshot.
    pub fn hold(&mut self, table: HeldTable) {
        self.pending = None;
        self.held = table;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{HashMap, HashSet},
        sync::Arc,
    };

    use super::*;
    use crate::alg::control::AlgSettings;

    fn table() -> ControlTable {
        ControlTable::new(settings(), 7)
    }

    fn settings() -> AlgSettings {
        AlgSettings {
            published: HashMap::new(),
            reserved: HashSet::new(),
            masquerade: None,
            data_ports: 1024..=65535,
            expectation_timeout_ns: 60_000_000_000,
            policy: Arc::default(),
            published_policies: HashMap::new(),
            established_timeout_ns: 7_440_000_000_000,
            transitory_timeout_ns: 240_000_000_000,
            forward_pure_acks: true,
        }
    }

    fn outbox(
        room: usize,
        sending: bool,
    ) -> (AlgOutbox, mpsc::Receiver<Queued>, watch::Sender<bool>) {
        let (queue, queued) = mpsc::channel(room);
        let (master, _) = watch::channel(true);
        let shared = Shared {
            sending,
            alg_snapshot_due: sending,
            ..Shared::default()
        };
        let outbox = AlgOutbox {
            queue,
            shared: Arc::new(Mutex::new(shared)),
            master: master.subscribe(),
        };
        (outbox, queued, master)
    }

    #[test]
    fn a_connected_standby_gets_a_snapshot_then_nothing_until_a_change() {
        let (mut outbox, mut queued, _master) = outbox(4, true);
        let mut table = table();
        outbox.send(&mut table);
        let frame = queued.try_recv().expect("the snapshot");
        let records = wire::decode(&frame.payload, 0).unwrap();
        assert_eq!(records.len(), 3, "{records:?}");
        assert_eq!(records[0], Record::AlgSnapshotBegin);
        assert_eq!(records[2], Record::AlgSnapshotEnd);
        let mut standby = StandbyAlg::default();
        for record in records {
            standby.apply(record).unwrap();
        }
        assert_eq!(standby.held(), 0);
        assert!(standby.take().is_empty());
        {
            let shared = lock(&outbox.shared);
            assert!(!shared.alg_snapshot_due);
            assert_eq!(shared.counters.alg_snapshots_sent, 1);
        }
        // Nothing changed since: nothing queued.
        outbox.send(&mut table);
        assert!(queued.try_recv().is_err());
    }

    /// A table holding one session (a save of an earlier version, restored).
    fn table_with_a_session() -> ControlTable {
        let saved = serde_json::from_str(include_str!("../../alg/control/tests/v2-state.json"))
            .expect("saved table");
        ControlTable::restore(settings(), saved).expect("restored")
    }

    #[test]
    fn a_full_queue_counts_the_records_and_asks_for_a_snapshot() {
        let (mut outbox, mut queued, _master) = outbox(1, true);
        let mut table = table_with_a_session();
        outbox.send(&mut table);
        let frame = queued.try_recv().expect("the snapshot");
        let mut standby = StandbyAlg::default();
        for record in wire::decode(&frame.payload, 0).unwrap() {
            standby.apply(record).unwrap();
        }
        assert_eq!(standby.held(), 1);
        {
            let shared = lock(&outbox.shared);
            assert_eq!(shared.counters.alg_records_sent, 1);
            assert_eq!(shared.alg_unacked, 1);
        }
        // Another snapshot fills the queue of one; the one after that is dropped, counted,
        // and a snapshot is due again.
        for _ in 0..2 {
            lock(&outbox.shared).alg_snapshot_due = true;
            outbox.send(&mut table);
        }
        let shared = lock(&outbox.shared);
        assert_eq!(shared.counters.alg_records_dropped, 1);
        assert_eq!(shared.counters.frames_dropped, 1);
        assert_eq!(shared.counters.resyncs, 1);
        assert!(shared.alg_snapshot_due);
    }

    #[test]
    fn nothing_is_queued_or_kept_without_a_standby() {
        let (mut outbox, mut queued, _master) = outbox(4, false);
        let mut table = table();
        table.track_changes(ChangeLog::Sync);
        outbox.send(&mut table);
        assert!(queued.try_recv().is_err());
        assert!(table.take_changes(ChangeLog::Sync, 0).is_none());
    }
}

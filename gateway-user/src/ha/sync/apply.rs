//! The standby's side: the records it receives written into its own maps. A bulk snapshot
//! replaces what the standby held: entries it does not name are removed at its end (an
//! entry the active removed while the standby was away). The ALG's records go to the
//! control sessions the standby holds (`alg::StandbyAlg`), not to the maps.

use std::collections::HashSet;

use crate::dataplane::{Dataplane, sync::SyncedKey};

use super::{alg::StandbyAlg, wire::Record};

/// What applying one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub records: u64,
    /// Of those, the ALG's (control sessions written or removed).
    pub alg_records: u64,
    /// Records the maps refused (a table full, most likely).
    pub errors: u64,
    pub snapshots: u64,
}

/// The standby's memory between batches: the keys a snapshot under way has named.
#[derive(Debug, Default)]
pub struct Applier {
    snapshot: Option<HashSet<SyncedKey>>,
    /// The ALG's control sessions, held for a promotion.
    pub(super) alg: StandbyAlg,
}

impl Applier {
    pub fn apply(&mut self, dataplane: &mut Dataplane, records: Vec<Record>) -> Applied {
        let mut applied = Applied::default();
        for record in records {
            let written = match record {
                Record::SnapshotBegin => {
                    self.snapshot = Some(HashSet::new());
                    Ok(())
                }
                Record::SnapshotEnd => {
                    applied.snapshots += 1;
                    self.end_snapshot(dataplane, &mut applied);
                    Ok(())
                }
                Record::Upsert(entry) => {
                    if let Some(named) = &mut self.snapshot {
                        named.insert(entry.key());
                    }
                    dataplane.write_synced(entry)
                }
                Record::Remove(key) => dataplane.remove_synced(key),
                alg @ (Record::AlgSnapshotBegin | Record::AlgSnapshotEnd | Record::Alg(_)) => {
                    match self.alg.apply(alg) {
                        Ok(records) => {
                            applied.alg_records += records;
                            applied.records += records;
                        }
                        Err(err) => {
                            applied.errors += 1;
                            tracing::warn!("ha sync: cannot read ftp sessions: {err}");
                        }
                    }
                    continue;
                }
            };
            applied.records += 1;
            if let Err(err) = written {
                applied.errors += 1;
                tracing::warn!("ha sync: cannot apply a record: {err}");
            }
        }
        applied
    }

    /// Removes what the snapshot did not name.
    fn end_snapshot(&mut self, dataplane: &mut Dataplane, applied: &mut Applied) {
        let Some(named) = self.snapshot.take() else {
            return;
        };
        for key in dataplane.synced_keys() {
            if !named.contains(&key) && dataplane.remove_synced(key).is_err() {
                applied.errors += 1;
            }
        }
    }

    /// Whether a snapshot is half applied: entries it has not named yet may be missing, and
    /// entries the active removed meanwhile may still be here.
    pub fn in_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    /// The connection went: a snapshot it left half done is not one.
    pub fn reset(&mut self) {
        self.snapshot = None;
        self.alg.reset();
    }
}

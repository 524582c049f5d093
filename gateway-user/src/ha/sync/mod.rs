//! The state sync of an active/standby pair: the active node streams its fast path's state
//! (masquerade mappings and their claims, filtering entries, both sessions of every
//! connection, expectations) to the standby, which writes it into its own maps, so that the
//! flows go on through it after a failover, with the same public ports.
//!
//! One TCP connection: every node listens on `[ha] sync_port`; the master connects to its
//! peer's and streams, the standby applies and acknowledges. Both ends prove the shared key
//! at connect and MAC every frame ([`auth`]); a connection from another address than the
//! peer's, or without the key, is refused and counted. On each (re)connection the active
//! sends a bulk snapshot, then, every [`WALK_INTERVAL`], the entries named as changed since
//! (the fast path's events and the agent's own writes), with a whole walk of the maps when
//! that is not enough ([`walk`]).
//!
//! Memory is bounded on both ends: the active queues at most [`QUEUE_FRAMES`] frames; when
//! the queue is full (the standby or the link is slower than the changes) it drops the
//! frame, counts it, and the next walk sends a full snapshot instead (a resync). The
//! standby's reader hands at most [`INCOMING_BATCHES`] decoded frames to the agent's loop and
//! reads no more meanwhile, which TCP's flow control carries back to the active.
//!
//! This module holds [`SyncState`], the sync as the agent holds it: what is synced and the
//! bookkeeping of what changed (the walks, the applier, the role, the status). The connection's
//! tasks (the listener, the active's sender, the standby's reader, the outgoing queue) and
//! their counters are in [`link`]: they own only sockets and counters; the maps belong to the
//! agent's loop, which walks ([`SyncState::walk`]) and applies ([`SyncState::apply`]) on its
//! own thread.

pub mod alg;
pub mod apply;
pub mod auth;
pub mod link;
pub mod walk;
pub mod wire;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::{
    sync::mpsc,
    time::{Interval, MissedTickBehavior, interval},
};

pub use self::link::{INCOMING_BATCHES, Incoming, QUEUE_FRAMES, SyncCounters};
use self::{
    alg::AlgOutbox,
    apply::Applier,
    link::{Link, lock, queue_frames},
    walk::{RECONCILE_INTERVAL, Walker},
};
use crate::{
    alg::control::HeldTable,
    config::{Ha, SyncKey},
    dataplane::{Dataplane, monotonic_now_ns, sync::SyncedKey},
};

/// How often the active node sends what changed. A tick reads only the entries named as
/// changed (see [`walk`]), so it can be short: a new flow reaches the standby within about
/// this much, and an idle tick costs a drained ring and one counter read.
pub const WALK_INTERVAL: Duration = Duration::from_millis(50);

/// The sync as `gateway status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// `sending` (master, its standby connected), `receiving` (an active node connected),
    /// or `idle`.
    pub link: String,
    /// Active side: frames sent on this connection and not yet acknowledged as applied.
    pub lag_frames: u64,
    /// Standby side: milliseconds since the last frame was applied.
    pub last_applied_ms_ago: Option<u64>,
    /// Standby side: this node holds a complete copy of the active node's state, as of the
    /// last frame applied: a snapshot was applied to its end (and no later one is half
    /// applied). What a node should show before it is made master on purpose (a failback).
    #[serde(default)]
    pub in_sync: bool,
    /// Active side: the ALG's records queued or sent and not yet acknowledged as applied:
    /// the control-session changes a death of this node now would lose (see `alg`).
    #[serde(default)]
    pub alg_unacked_records: u64,
    /// Standby side: the FTP control sessions it holds for the active node.
    #[serde(default)]
    pub alg_sessions_held: u64,
    pub counters: SyncCounters,
}

/// What wakes the agent's loop for the sync.
#[derive(Debug)]
pub enum SyncEvent {
    Walk,
    Incoming(Incoming),
}

/// The agent loop's side of the sync's channels (held as a local of its loop).
pub struct SyncEvents {
    walks: Interval,
    incoming: mpsc::Receiver<Incoming>,
}

impl SyncEvents {
    pub async fn next(&mut self) -> SyncEvent {
        tokio::select! {
            _ = self.walks.tick() => SyncEvent::Walk,
            Some(incoming) = self.incoming.recv() => SyncEvent::Incoming(incoming),
        }
    }
}

/// The sync, as the agent holds it.
pub struct SyncState {
    /// The connection's tasks, the queue to them and the role they act on.
    link: Link,
    walker: Walker,
    /// Keys named as changed, reused from tick to tick.
    changed: Vec<SyncedKey>,
    /// When the maps were last walked whole.
    walked: Instant,
    applier: Applier,
    events: Option<SyncEvents>,
}

impl SyncState {
    /// Listens on the sync port and starts the tasks; the node is a standby until
    /// [`SyncState::set_master`]. Runs inside the agent's runtime.
    pub fn start(ha: &Ha, key: &SyncKey) -> std::io::Result<SyncState> {
        let (link, incoming) = Link::start(ha, key)?;
        let mut walks = interval(WALK_INTERVAL);
        walks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(SyncState {
            link,
            walker: Walker::default(),
            changed: Vec::new(),
            walked: Instant::now(),
            applier: Applier::default(),
            events: Some(SyncEvents { walks, incoming }),
        })
    }

    /// The ALG's way into the queue (see [`alg`]).
    pub fn alg_outbox(&self) -> AlgOutbox {
        AlgOutbox {
            queue: self.link.queue.clone(),
            shared: self.link.shared.clone(),
            master: self.link.master.subscribe(),
        }
    }

    /// Promotion: the control sessions held for the active node, for the ALG to take over.
    pub fn take_held_alg(&mut self) -> HeldTable {
        self.applier.alg.take()
    }

    /// Demotion: this node's own control sessions, held until the new active node's
    /// snapshot replaces them.
    pub fn hold_alg(&mut self, table: HeldTable) {
        self.applier.alg.hold(table);
    }

    /// The channels the agent's loop waits on (once).
    pub fn take_events(&mut self) -> Option<SyncEvents> {
        self.events.take()
    }

    /// The node's role changed: a master streams, a standby applies.
    pub fn set_master(&mut self, master: bool) {
        let was_master = self.link.master.send_replace(master);
        if master && !was_master {
            self.check_promotion();
        }
        if master {
            self.applier.reset();
        } else {
            self.walker.forget();
        }
    }

    /// A standby made master: says (and counts) when it does not hold a complete copy of
    /// the peer's state. keepalived's decision stands either way (a node that refused would
    /// leave the pair with no master): what was received is kept, nothing is removed for a
    /// snapshot left half done, and the peer, once it is back as standby, gets this node's
    /// snapshot.
    fn check_promotion(&mut self) {
        let mut shared = lock(&self.link.shared);
        let Some(unsynced) = UnsyncedPromotion::of(
            self.applier.in_snapshot(),
            shared.counters.snapshots_applied,
        ) else {
            return;
        };
        shared.counters.promotions_unsynced += 1;
        match unsynced {
            UnsyncedPromotion::MidSnapshot => tracing::warn!(
                "ha sync: promoted in the middle of the peer's snapshot: flows it had not sent yet are not here and start afresh"
            ),
            UnsyncedPromotion::NothingReceived => tracing::info!(
                "ha sync: promoted with no state from the peer (no snapshot received since this agent started): flows the peer carried, if any, start afresh"
            ),
        }
    }

    /// On the master with its standby connected: the changes since the last tick (or a
    /// snapshot), queued for the standby. Nothing otherwise (what changed meanwhile is
    /// dropped: a connection starts with a snapshot).
    pub fn walk(&mut self, dataplane: &mut Dataplane) {
        self.changed.clear();
        let changes = dataplane.take_changes(&mut self.changed);
        let snapshot = {
            let mut shared = lock(&self.link.shared);
            shared.counters.events += changes.events;
            if !shared.sending || !*self.link.master.borrow() {
                return;
            }
            std::mem::take(&mut shared.snapshot_due)
        };
        let whole = snapshot || changes.walk_due || self.walked.elapsed() >= RECONCILE_INTERVAL;
        let records = if whole {
            self.walked = Instant::now();
            self.walker.walk(dataplane.synced_entries(), snapshot)
        } else {
            self.walker
                .changed(self.changed.drain(..), |key| dataplane.synced_entry(key))
        };
        let mut shared = lock(&self.link.shared);
        if whole {
            shared.counters.full_walks += 1;
        }
        if snapshot {
            shared.counters.snapshots_sent += 1;
        }
        if !queue_frames(&self.link.queue, &records, monotonic_now_ns(), &mut shared) {
            self.walker.forget();
            tracing::warn!(
                queued = QUEUE_FRAMES,
                "ha sync: the queue to the standby is full; frames dropped, a resync follows"
            );
        }
    }

    /// On the standby: writes what the active sent into the maps.
    pub fn apply(&mut self, dataplane: &mut Dataplane, incoming: Incoming) {
        match incoming {
            Incoming::Closed => self.applier.reset(),
            Incoming::Frame { seq, records } => {
                if *self.link.master.borrow() {
                    lock(&self.link.shared).counters.ignored_as_master += 1;
                    return;
                }
                let applied = self.applier.apply(dataplane, records);
                let mut shared = lock(&self.link.shared);
                shared.counters.frames_applied += 1;
                shared.counters.records_applied += applied.records;
                shared.counters.alg_records_applied += applied.alg_records;
                shared.counters.apply_errors += applied.errors;
                shared.counters.snapshots_applied += applied.snapshots;
                shared.applied_seq = Some(seq);
                shared.last_applied = Some(Instant::now());
            }
        }
    }

    pub fn status(&self) -> SyncStatus {
        let shared = lock(&self.link.shared);
        let link = if shared.sending {
            "sending"
        } else if shared.receiving {
            "receiving"
        } else {
            "idle"
        };
        SyncStatus {
            link: link.into(),
            lag_frames: shared.sent_frames.saturating_sub(shared.acked_frames),
            last_applied_ms_ago: shared
                .last_applied
                .map(|when| when.elapsed().as_millis() as u64),
            in_sync: !*self.link.master.borrow()
                && shared.counters.snapshots_applied > 0
                && !self.applier.in_snapshot(),
            alg_unacked_records: shared.alg_unacked,
            alg_sessions_held: self.applier.alg.held() as u64,
            counters: shared.counters,
        }
    }
}

/// Why a standby made master holds no complete copy of its peer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnsyncedPromotion {
    /// A snapshot was half applied: what it had not named yet is missing (and nothing is
    /// removed for it: the applier forgets it).
    MidSnapshot,
    /// No snapshot was applied since the agent started (a pair's first master, or a node
    /// promoted before its peer ever streamed to it).
    NothingReceived,
}

impl UnsyncedPromotion {
    fn of(in_snapshot: bool, snapshots_applied: u64) -> Option<UnsyncedPromotion> {
        if in_snapshot {
            Some(UnsyncedPromotion::MidSnapshot)
        } else if snapshots_applied == 0 {
            Some(UnsyncedPromotion::NothingReceived)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promotion_is_unsynced_mid_snapshot_or_before_any_snapshot() {
        assert_eq!(
            UnsyncedPromotion::of(false, 0),
            Some(UnsyncedPromotion::NothingReceived)
        );
        // A resync's snapshot half applied: older entries are there, newer may not be.
        assert_eq!(
            UnsyncedPromotion::of(true, 3),
            Some(UnsyncedPromotion::MidSnapshot)
        );
        assert_eq!(
            UnsyncedPromotion::of(true, 0),
            Some(UnsyncedPromotion::MidSnapshot)
        );
        assert_eq!(UnsyncedPromotion::of(false, 1), None);
    }
}

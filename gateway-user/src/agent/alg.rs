//! The FTP ALG's moving parts in the agent: the control table, the raw socket it sends
//! with, the saved state, the capture clients, and the counters of its I/O.

use std::time::Instant;

use tokio::sync::mpsc;

use crate::{
    alg::{
        control::{ControlTable, Outgoing},
        sender::RawSender,
        shell::BatchRead,
        store::StateStore,
    },
    capture,
    dataplane::{Dataplane, monotonic_now_ns},
    ha::sync::alg::AlgOutbox,
};

/// The FTP ALG's moving parts in the agent.
pub(super) struct Alg {
    pub(super) table: ControlTable,
    pub(super) raw: RawSender,
    pub(super) send_failures: u64,
    pub(super) undecodable: u64,
    /// `gateway capture` clients: pcap records of every punted packet as it arrived and
    /// every packet the ALG sent. A client that falls behind loses records, not the ALG time.
    pub(super) captures: Vec<mpsc::Sender<Vec<u8>>>,
    /// With a pinned fast path: where the control sessions are saved, before any packet they
    /// produce leaves (so a restart never finds state older than what the peers saw).
    pub(super) store: Option<StateStore>,
    /// With the HA state sync: where the control sessions' changes are queued for the
    /// standby, also before any packet they produce leaves (see `ha::sync::alg`).
    pub(super) sync: Option<AlgOutbox>,
    /// Punted packets handled, and the time spent on them (translation, state, sending):
    /// where an ALG packet's time goes, for the benchmarks.
    pub(super) handled: u64,
    pub(super) busy_ns: u64,
    /// Time the handled packets waited in the punt ring before the agent took them.
    pub(super) waited_ns: u64,
    /// Punted packets taken from the tap and from the ring: which transport is in use.
    pub(super) from_tap: u64,
    pub(super) from_ring: u64,
    /// How many wake-ups and system calls the punted packets cost.
    pub(super) io: IoCounts,
}

/// What the ALG's I/O costs, counted (not timed): the ratios to the packets handled and sent
/// are what batching saves.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct IoCounts {
    /// Times the agent waited for punts and was woken (one per readiness of the tap or the
    /// ring it slept on, empty ones included).
    pub(super) wakeups: u64,
    /// Batches handled: packets translated together, saved once, sent together.
    pub(super) batches: u64,
    /// Of those, batches the busy-poll found without sleeping.
    pub(super) polled_batches: u64,
    /// Time spent busy-polling and finding nothing, ns: what the busy-poll costs.
    pub(super) poll_idle_ns: u64,
    /// Send system calls (`sendmmsg`) on the raw socket.
    pub(super) send_calls: u64,
    /// Packets the raw socket took.
    pub(super) sent: u64,
}

impl Alg {
    /// Accounts for what a read of either transport found.
    pub(super) fn took(&mut self, read: BatchRead, from_tap: bool) {
        self.undecodable += read.undecodable as u64;
        self.waited_ns += read.waited_ns;
        self.io.wakeups += read.wakeups;
        let packets = read.packets as u64;
        if from_tap {
            self.from_tap += packets;
        } else {
            self.from_ring += packets;
        }
    }

    /// Handles a batch of punted packets: translates them all, saves the state (the journal,
    /// and the HA sync's queue), then sends: a segment whose rewrite moved its connection's
    /// sequence edits never leaves before the record of those edits is saved and queued for
    /// the standby.
    pub(super) fn handle_batch(
        &mut self,
        dataplane: &mut Dataplane,
        batch: &mut Vec<(u8, Vec<u8>)>,
    ) {
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        self.io.batches += 1;
        self.handled += batch.len() as u64;
        let now = monotonic_now_ns();
        let mut outgoing = Vec::new();
        for (reason, packet) in batch.drain(..) {
            self.capture(&packet);
            outgoing.extend(self.table.on_packet(reason, &packet, now, dataplane));
        }
        self.save_state();
        self.send_all(outgoing);
        self.busy_ns += started.elapsed().as_nanos() as u64;
    }

    /// Sends what a batch (or the resend timer) produced, in as few system calls as it can.
    pub(super) fn send_all(&mut self, outgoing: Vec<Outgoing>) {
        if outgoing.is_empty() {
            return;
        }
        for packet in &outgoing {
            self.capture(&packet.bytes);
        }
        let mut failures = 0;
        let report = self.raw.send_batch(&outgoing, |packet, err| {
            failures += 1;
            tracing::warn!(dst = %packet.dst, "cannot send a control packet: {err}");
        });
        self.send_failures += failures;
        self.io.send_calls += report.calls;
        self.io.sent += report.sent;
    }

    /// Saves what changed in the control sessions (the journal; now and then a snapshot)
    /// and queues it for the HA standby. Each takes its own log of the changes.
    pub(super) fn save_state(&mut self) {
        if let Some(store) = &mut self.store
            && let Err(err) = store.save_changes(&mut self.table)
        {
            tracing::warn!("cannot save the ftp sessions: {err}");
        }
        self.sync_state();
    }

    /// Queues what changed in the control sessions for the HA standby (a snapshot of them
    /// when a standby has just connected, or after frames were dropped).
    pub(super) fn sync_state(&mut self) {
        if let Some(outbox) = &mut self.sync {
            outbox.send(&mut self.table);
        }
    }

    fn capture(&mut self, packet: &[u8]) {
        if self.captures.is_empty() {
            return;
        }
        let record = capture::record(std::time::SystemTime::now(), packet);
        self.captures.retain(|client| {
            !matches!(
                client.try_send(record.clone()),
                Err(mpsc::error::TrySendError::Closed(_))
            )
        });
    }

    /// The agent's own totals beside the table's, by bare name (as `AlgStats::totals`).
    pub(super) fn own_totals(&self) -> [(&'static str, u64); 13] {
        [
            ("send_failed", self.send_failures),
            ("undecodable", self.undecodable),
            ("handled", self.handled),
            ("busy_ns", self.busy_ns),
            ("wait_ns", self.waited_ns),
            ("punt_tap_packets", self.from_tap),
            ("punt_ring_packets", self.from_ring),
            ("wakeups", self.io.wakeups),
            ("batches", self.io.batches),
            ("busy_poll_batches", self.io.polled_batches),
            ("busy_poll_idle_ns", self.io.poll_idle_ns),
            ("send_calls", self.io.send_calls),
            ("sent", self.io.sent),
        ]
    }

    pub(super) fn counters(&self) -> Vec<(String, u64)> {
        let mut counters = self.table.stats().pairs();
        counters.extend(
            self.own_totals()
                .into_iter()
                .map(|(name, value)| (format!("alg_{name}"), value)),
        );
        counters
    }
}

//! The sync's connection: the tasks that own its sockets, and what they share with the
//! agent's loop ([`SyncState`](super::SyncState) holds the rest: what is synced, and the
//! bookkeeping of what changed).
//!
//! Every node listens on `[ha] sync_port` (`Standby`: one active node at a time, from the
//! peer's address only); the master connects to its peer's (`Active`) and writes the frames
//! queued for it (`queue_frames`, at most [`QUEUE_FRAMES`]), a keepalive at least every
//! `KEEPALIVE`, and reads the standby's acknowledgements. The standby's reader decodes the
//! frames and hands them ([`Incoming`], at most [`INCOMING_BATCHES`] at a time) to the agent's
//! loop, which applies them; its acknowledger says every `KEEPALIVE` how many were applied.
//! Either side gives a connection up after `SILENCE`. The counters ([`SyncCounters`]) and
//! the connection's state live in `Shared`, under one lock.

use std::{
    collections::VecDeque,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{interval, sleep, timeout},
};

use super::{
    auth::{self, AuthError, Side},
    wire::{self, Record},
};
use crate::{
    config::{Ha, SyncKey},
    dataplane::monotonic_now_ns,
};

/// Frames the active node queues for the standby, at most.
pub const QUEUE_FRAMES: usize = 64;
/// Decoded frames the standby's reader hands to the agent's loop, at most.
pub const INCOMING_BATCHES: usize = 8;
/// Records in one frame, at most (a frame stays well under [`auth::MAX_PAYLOAD`]).
const RECORDS_PER_FRAME: usize = 4096;
/// Each side sends at least a frame this often (an empty one, or an acknowledgement)...
const KEEPALIVE: Duration = Duration::from_secs(1);
/// ... and gives the connection up after this long without one (a peer that died without a
/// word, as a machine does).
const SILENCE: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(500);

/// The sync's counters, since the agent started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCounters {
    /// Connections authenticated (either way).
    pub connections: u64,
    /// Connections refused: another address than the peer's, or a peer that does not hold
    /// the key (either side counts its own refusals).
    pub refused: u64,
    /// Active side: frames sent (keepalives included) and the records they carried.
    pub frames_sent: u64,
    pub records_sent: u64,
    /// Active side: frames dropped because the queue was full.
    pub frames_dropped: u64,
    /// Active side: bulk snapshots sent (one per connection, one per resync).
    pub snapshots_sent: u64,
    /// Active side: change events drained from the fast path, and whole walks of the maps
    /// (snapshots, lost events, the periodic reconciliation).
    #[serde(default)]
    pub events: u64,
    #[serde(default)]
    pub full_walks: u64,
    /// Active side: resyncs forced by dropped frames.
    pub resyncs: u64,
    /// Standby side: frames applied to the maps, and their records.
    pub frames_applied: u64,
    pub records_applied: u64,
    /// Standby side: records the maps refused.
    pub apply_errors: u64,
    /// Standby side: frames received while this node was master (not applied).
    pub ignored_as_master: u64,
    /// Standby side: bulk snapshots applied to the end.
    #[serde(default)]
    pub snapshots_applied: u64,
    /// Promotions to master without a complete copy of the peer's state: none received
    /// since the agent started, or a snapshot half applied.
    #[serde(default)]
    pub promotions_unsynced: u64,
    /// Active side: the FTP ALG's records (control sessions changed or removed, snapshots
    /// included) queued for the standby, and its snapshots; included in `records_sent`.
    #[serde(default)]
    pub alg_records_sent: u64,
    #[serde(default)]
    pub alg_snapshots_sent: u64,
    /// Active side: the ALG's records dropped because the queue was full: their batch's
    /// packets left without them (a snapshot followed).
    #[serde(default)]
    pub alg_records_dropped: u64,
    /// Standby side: the ALG's records applied to the sessions it holds (in
    /// `records_applied`).
    #[serde(default)]
    pub alg_records_applied: u64,
}

/// What the sockets' tasks and the agent's loop share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) counters: SyncCounters,
    /// Active side: a standby is connected and authenticated.
    pub(super) sending: bool,
    /// Active side: the next walk sends a snapshot.
    pub(super) snapshot_due: bool,
    /// Active side, this connection: frames sent and frames the standby says it applied.
    pub(super) sent_frames: u64,
    pub(super) acked_frames: u64,
    /// Active side: the ALG's next records are a snapshot of its table.
    pub(super) alg_snapshot_due: bool,
    /// Active side: the ALG's records not yet acknowledged, and, per frame written (by its
    /// sequence number), how many it carried.
    pub(super) alg_unacked: u64,
    pub(super) alg_in_flight: VecDeque<(u64, u64)>,
    /// Standby side: an active node is connected.
    pub(super) receiving: bool,
    /// Standby side: the sequence number of the last frame applied, this connection.
    pub(super) applied_seq: Option<u64>,
    pub(super) last_applied: Option<Instant>,
}

pub(super) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // The counters stay usable after a panic elsewhere.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the standby's reader hands the agent's loop.
#[derive(Debug)]
pub enum Incoming {
    Frame {
        seq: u64,
        records: Vec<Record>,
    },
    /// The connection ended.
    Closed,
}

/// A frame's payload in the queue to the standby, with the ALG records it carries.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) payload: Vec<u8>,
    pub(super) alg_records: u64,
}

/// Aborts a task when dropped: a connection's tasks end with it.
struct TaskGuard<T>(JoinHandle<T>);

impl<T> Drop for TaskGuard<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The connection's tasks and the agent's handles on them: the queue to the standby, the
/// role they act on, and the state they share.
pub(super) struct Link {
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) queue: mpsc::Sender<Queued>,
    pub(super) master: watch::Sender<bool>,
    _tasks: [TaskGuard<()>; 2],
}

impl Link {
    /// Listens on the sync port and starts the tasks, as a standby's; returns the link and
    /// the channel of what the standby's reader receives. Runs inside the agent's runtime.
    pub(super) fn start(
        ha: &Ha,
        key: &SyncKey,
    ) -> std::io::Result<(Link, mpsc::Receiver<Incoming>)> {
        let socket = TcpSocket::new_v4()?;
        // A restarted agent binds again while the old connection lingers in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from((ha.listen, ha.sync_port)))?;
        let listener = socket.listen(4)?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (queue, queued) = mpsc::channel(QUEUE_FRAMES);
        let (handed, incoming) = mpsc::channel(INCOMING_BATCHES);
        let (master, is_master) = watch::channel(false);
        let standby = Standby {
            peer: ha.peer,
            key: key.clone(),
            node_id: ha.node_id,
            shared: shared.clone(),
            incoming: handed,
        };
        let active = Active {
            peer: SocketAddrV4::new(ha.peer, ha.sync_port),
            key: key.clone(),
            node_id: ha.node_id,
            shared: shared.clone(),
        };
        let link = Link {
            shared,
            queue,
            master,
            _tasks: [
                TaskGuard(tokio::spawn(standby.serve(listener))),
                TaskGuard(tokio::spawn(active.run(queued, is_master))),
            ],
        };
        Ok((link, incoming))
    }
}

/// Queues `records` for the standby, [`RECORDS_PER_FRAME`] to a frame; false if the queue
/// was full: the frames from there on are dropped and counted, and a snapshot is due (the
/// caller forgets what it sent).
pub(super) fn queue_frames(
    queue: &mpsc::Sender<Queued>,
    records: &[Record],
    now_ns: u64,
    shared: &mut Shared,
) -> bool {
    let frames = records.chunks(RECORDS_PER_FRAME).count() as u64;
    for (index, chunk) in records.chunks(RECORDS_PER_FRAME).enumerate() {
        let mut payload = Vec::new();
        wire::encode(chunk, now_ns, &mut payload);
        let queued = Queued {
            payload,
            alg_records: 0,
        };
        if queue.try_send(queued).is_err() {
            // Behind: what the standby misses now comes with a full snapshot.
            shared.counters.frames_dropped += frames - index as u64;
            shared.counters.resyncs += 1;
            shared.snapshot_due = true;
            return false;
        }
        shared.counters.records_sent += chunk.len() as u64;
    }
    true
}

/// The standby's listener: one active node at a time.
struct Standby {
    peer: Ipv4Addr,
    key: SyncKey,
    node_id: u8,
    shared: Arc<Mutex<Shared>>,
    incoming: mpsc::Sender<Incoming>,
}

impl Standby {
    async fn serve(self, listener: TcpListener) {
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("ha sync: accept: {err}");
                    sleep(RETRY).await;
                    continue;
                }
            };
            if from.ip() != self.peer {
                lock(&self.shared).counters.refused += 1;
                tracing::warn!(%from, peer = %self.peer, "ha sync: refused a connection: not from the peer");
                continue;
            }
            match self.receive(stream).await {
                Err(err) if err.is_refusal() => {
                    lock(&self.shared).counters.refused += 1;
                    tracing::warn!(%from, "ha sync: refused the active node: {err}");
                }
                Err(err) => {
                    tracing::info!(%from, "ha sync: the active node's connection ended: {err}")
                }
                Ok(()) => {}
            }
            {
                let mut shared = lock(&self.shared);
                shared.receiving = false;
                shared.applied_seq = None;
            }
            if self.incoming.send(Incoming::Closed).await.is_err() {
                return;
            }
        }
    }

    async fn receive(&self, mut stream: TcpStream) -> Result<(), AuthError> {
        let session = timeout(
            SILENCE,
            auth::accept(&mut stream, self.key.bytes(), self.node_id),
        )
        .await
        .map_err(timed_out)??;
        tracing::info!(
            peer_id = session.peer_id,
            "ha sync: receiving state from the active node"
        );
        {
            let mut shared = lock(&self.shared);
            shared.receiving = true;
            shared.counters.connections += 1;
        }
        let (mut reader, writer) = stream.into_split();
        let mut acks = TaskGuard(tokio::spawn(acknowledge(
            writer,
            session.sealer(Side::Standby),
            self.shared.clone(),
        )));
        let mut opener = session.opener(Side::Active);
        loop {
            let (seq, payload) = tokio::select! {
                read = timeout(SILENCE, opener.read(&mut reader)) => read.map_err(timed_out)??,
                ended = &mut acks.0 => return task_ended(ended),
            };
            let records = wire::decode(&payload, monotonic_now_ns())
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
            if self
                .incoming
                .send(Incoming::Frame { seq, records })
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }
}

/// The standby's acknowledgements: every [`KEEPALIVE`], the last frame applied.
async fn acknowledge(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut sealer: auth::Sealer,
    shared: Arc<Mutex<Shared>>,
) -> Result<(), AuthError> {
    let mut ticks = interval(KEEPALIVE);
    loop {
        ticks.tick().await;
        let applied = lock(&shared).applied_seq;
        // The count of frames applied: the sequence number after the last one.
        let count = applied.map_or(0, |seq| seq + 1);
        let (_, frame) = sealer.seal(&count.to_be_bytes());
        timeout(SILENCE, writer.write_all(&frame))
            .await
            .map_err(timed_out)??;
    }
}

/// The active node's connection to its standby, while it is master.
struct Active {
    peer: SocketAddrV4,
    key: SyncKey,
    node_id: u8,
    shared: Arc<Mutex<Shared>>,
}

impl Active {
    async fn run(self, mut queued: mpsc::Receiver<Queued>, mut master: watch::Receiver<bool>) {
        loop {
            if master.wait_for(|master| *master).await.is_err() {
                return;
            }
            match self.stream(&mut queued, &mut master).await {
                Ok(()) => {}
                Err(err) if err.is_refusal() => {
                    lock(&self.shared).counters.refused += 1;
                    tracing::warn!(peer = %self.peer, "ha sync: refused the standby: {err}");
                }
                Err(err) => tracing::debug!(peer = %self.peer, "ha sync: no standby: {err}"),
            }
            lock(&self.shared).sending = false;
            sleep(RETRY).await;
        }
    }

    async fn stream(
        &self,
        queued: &mut mpsc::Receiver<Queued>,
        master: &mut watch::Receiver<bool>,
    ) -> Result<(), AuthError> {
        let mut stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(self.peer))
            .await
            .map_err(timed_out)??;
        stream.set_nodelay(true)?;
        let session = timeout(
            SILENCE,
            auth::connect(&mut stream, self.key.bytes(), self.node_id),
        )
        .await
        .map_err(timed_out)??;
        tracing::info!(peer = %self.peer, peer_id = session.peer_id, "ha sync: streaming state to the standby");
        // Changes queued for an earlier connection: the snapshot that comes first covers them.
        while queued.try_recv().is_ok() {}
        {
            let mut shared = lock(&self.shared);
            shared.sending = true;
            shared.snapshot_due = true;
            shared.alg_snapshot_due = true;
            shared.alg_unacked = 0;
            shared.alg_in_flight.clear();
            shared.sent_frames = 0;
            shared.acked_frames = 0;
            shared.counters.connections += 1;
        }
        let (reader, mut writer) = stream.into_split();
        let opener = session.opener(Side::Standby);
        let mut acks = TaskGuard(tokio::spawn(read_acks(reader, opener, self.shared.clone())));
        let mut sealer = session.sealer(Side::Active);
        let mut keepalive = interval(KEEPALIVE);
        loop {
            let payload = tokio::select! {
                payload = queued.recv() => match payload {
                    Some(payload) => payload,
                    None => return Ok(()),
                },
                _ = keepalive.tick() => Queued { payload: Vec::new(), alg_records: 0 },
                ended = &mut acks.0 => return task_ended(ended),
                changed = master.changed() => {
                    if changed.is_err() || !*master.borrow() {
                        return Ok(());
                    }
                    continue;
                }
            };
            let (seq, frame) = sealer.seal(&payload.payload);
            if payload.alg_records > 0 {
                lock(&self.shared)
                    .alg_in_flight
                    .push_back((seq, payload.alg_records));
            }
            timeout(SILENCE, writer.write_all(&frame))
                .await
                .map_err(timed_out)??;
            let mut shared = lock(&self.shared);
            shared.sent_frames += 1;
            shared.counters.frames_sent += 1;
        }
    }
}

/// The active side's reader: the standby's acknowledgements (the count of frames applied).
async fn read_acks(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut opener: auth::Opener,
    shared: Arc<Mutex<Shared>>,
) -> Result<(), AuthError> {
    loop {
        let (_, payload) = timeout(SILENCE, opener.read(&mut reader))
            .await
            .map_err(timed_out)??;
        let count = <[u8; 8]>::try_from(payload.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "bad acknowledgement")
            })?;
        let mut shared = lock(&shared);
        shared.acked_frames = count;
        // Frames below `count` are applied: their ALG records are out of the window.
        while let Some(&(seq, records)) = shared.alg_in_flight.front() {
            if seq >= count {
                break;
            }
            shared.alg_in_flight.pop_front();
            shared.alg_unacked = shared.alg_unacked.saturating_sub(records);
        }
    }
}

/// A connection's helper task ended: why, as the connection's end.
fn task_ended(
    ended: Result<Result<(), AuthError>, tokio::task::JoinError>,
) -> Result<(), AuthError> {
    ended.unwrap_or_else(|err| Err(std::io::Error::other(err).into()))
}

fn timed_out(_: tokio::time::error::Elapsed) -> AuthError {
    AuthError::Io(std::io::ErrorKind::TimedOut.into())
}

#[cfg(test)]
mod tests {
    use gateway_common::Endpoint;

    use super::*;
    use crate::dataplane::sync::SyncedKey;

    #[test]
    fn a_full_queue_drops_counts_and_asks_for_a_snapshot() {
        let (queue, mut queued) = mpsc::channel(1);
        let mut shared = Shared::default();
        let gone = |port: u16| {
            Record::Remove(SyncedKey::ByPublic(Endpoint::new(
                [203, 0, 113, 1],
                port.to_be_bytes(),
                6,
            )))
        };
        // Three frames' worth for a queue of one.
        let records: Vec<Record> = (0..RECORDS_PER_FRAME as u16 * 2 + 1).map(gone).collect();
        assert!(!queue_frames(&queue, &records, 0, &mut shared));
        assert_eq!(shared.counters.records_sent, RECORDS_PER_FRAME as u64);
        assert_eq!(shared.counters.frames_dropped, 2);
        assert_eq!(shared.counters.resyncs, 1);
        assert!(shared.snapshot_due);
        let first = queued.try_recv().expect("the first frame queued");
        assert_eq!(
            wire::decode(&first.payload, 0).unwrap(),
            records[..RECORDS_PER_FRAME]
        );
        // Room again: queued whole.
        assert!(queue_frames(&queue, &records[..3], 0, &mut shared));
        assert_eq!(shared.counters.frames_dropped, 2);
    }
}

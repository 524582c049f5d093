//! `gateway run`: loads and attaches the fast path, then serves until SIGINT or SIGTERM: the
//! FTP ALG (punt ring in, raw socket out), the periodic sweep, the management API on its Unix
//! socket and, if configured, Prometheus metrics.
//!
//! Everything runs on one thread (tokio's current-thread runtime): the ALG, the sweep and the
//! management requests take turns on the maps, so none of them needs a lock. Connections to
//! the management socket and the metrics port are read by their own tasks, which hand the
//! parsed request to the main loop and wait for its answer.
//!
//! This file is that loop (`Agent::serve`) and the way out; the rest lives by role:
//! `startup` (`run`: checks, load, attach, restore), `alg` (the ALG's I/O state and
//! counters), `punts` (what the agent does per wake-up: drain, batch, busy-poll), `api`
//! (management requests and their rows), `status` (the structured status, counters and
//! metrics snapshot), `reload` (applies [`Config::diff`]), `reattach`
//! (interfaces that come back), `ha` (the node's role in an active/standby pair: attach on
//! promotion, detach on demotion) and `sweep`.

mod alg;
mod api;
mod ha;
mod punts;
mod reattach;
mod reload;
mod startup;
mod status;
mod sweep;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{mpsc, oneshot},
};

pub use self::startup::{RunOptions, run};
use self::{
    alg::Alg,
    api::answer_management,
    punts::Punts,
    sweep::{Sweeping, sweep_ticks},
};
use crate::{
    alg::{
        shell::{BatchRead, PuntReader},
        tap::PuntTap,
    },
    config::{Config, Hook, XdpMode},
    dataplane::{Attachment, Dataplane},
    ha::{RoleState, sync::SyncState},
    management::{Request, Response},
    metrics,
    sysctl::HostSettings,
    system,
};

struct Agent {
    config: Config,
    config_path: PathBuf,
    dataplane: Dataplane,
    alg: Alg,
    /// One per configured interface, inside then outside; `None` while it is gone.
    attachments: Vec<Option<Attachment>>,
    ifindexes: [u32; 2],
    hook: Hook,
    xdp_mode: Option<XdpMode>,
    /// The sysctls the fast path needs on both interfaces, and what the agent owes the host
    /// for them; taken at exit (put back, or left for a pinned fast path).
    host_settings: Option<HostSettings>,
    started: Instant,
    sweeping: Sweeping,
    /// The punt tap's name and ifindex while TC punts to it.
    punt_tap: Option<(String, u32)>,
    /// With `[ha]`: the role keepalived gave this node; only a master is attached.
    ha: Option<RoleState>,
    /// With `[ha] key_file`: the state sync with the peer.
    sync: Option<SyncState>,
    /// With `[ftp] cpu_wakeup_latency_us`: the agent's request on the CPUs' idle states.
    cpu_latency: Option<system::CpuLatencyRequest>,
}

struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

/// What the connection tasks ask the main loop.
enum Query {
    Api(Request),
    Metrics,
    /// Start sending capture records to this channel.
    Capture(mpsc::Sender<Vec<u8>>),
}

type QueryChannel = mpsc::Sender<(Query, oneshot::Sender<String>)>;

impl Agent {
    /// Runs until SIGINT or SIGTERM; returns the signal's name.
    async fn serve(
        &mut self,
        reader: PuntReader,
        tap: Option<PuntTap>,
        listener: UnixListener,
        metrics: Option<TcpListener>,
        signals: Signals,
    ) -> anyhow::Result<&'static str> {
        let Signals {
            mut interrupt,
            mut terminate,
        } = signals;
        let mut interval = self.config.sweep_interval;
        let mut ticks = sweep_ticks(interval);
        let mut interface_checks = tokio::time::interval(Duration::from_secs(1));
        interface_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (queries, mut incoming) = mpsc::channel(16);
        let mut punts = Punts {
            ring: reader,
            tap,
            ring_batch: Vec::new(),
            tap_batch: Vec::new(),
        };
        let mut sync_events = self.sync.as_mut().and_then(SyncState::take_events);
        loop {
            tokio::select! {
                _ = interrupt.recv() => return Ok("SIGINT"),
                _ = terminate.recv() => return Ok("SIGTERM"),
                read = punts.ring.next_batch(&mut punts.ring_batch) => {
                    let read = read.context("cannot read the punt ring buffer")?;
                    self.alg.took(read, false);
                    self.take_punts(&mut punts);
                }
                read = read_tap(punts.tap.as_mut(), &mut punts.tap_batch) => {
                    match read {
                        Ok(read) => self.alg.took(read, true),
                        Err(err) => self.lose_tap(&mut punts, &err),
                    }
                    self.take_punts(&mut punts);
                }
                _ = ticks.tick() => self.sweep(),
                event = ha::next_sync_event(sync_events.as_mut()) => self.on_sync_event(event),
                _ = interface_checks.tick() => {
                    self.check_interfaces();
                    let owed = self.alg.table.resend_owed();
                    self.alg.send_all(owed);
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(answer_management(stream, queries.clone()));
                    }
                    Err(err) => tracing::warn!("management socket: {err}"),
                },
                accepted = metrics::endpoint::accept(metrics.as_ref()) => match accepted {
                    Ok(stream) => {
                        let queries = queries.clone();
                        tokio::spawn(metrics::endpoint::answer(stream, move || {
                            let queries = queries.clone();
                            async move { ask(&queries, Query::Metrics).await }
                        }));
                    }
                    Err(err) => tracing::warn!("metrics listener: {err}"),
                },
                Some((query, reply)) = incoming.recv() => {
                    let answer = match query {
                        Query::Api(request) => {
                            let response = match self.handle(request) {
                                Ok(data) => Response::Ok { data },
                                Err(err) => Response::Error { message: format!("{err:#}") },
                            };
                            serde_json::to_string(&response).unwrap_or_default()
                        }
                        Query::Metrics => metrics::render(self.snapshot()),
                        Query::Capture(records) => {
                            self.alg.captures.push(records);
                            String::new()
                        }
                    };
                    let _ = reply.send(answer);
                    // Reloads and flushes change the sessions.
                    self.alg.save_state();
                    if self.config.sweep_interval != interval {
                        interval = self.config.sweep_interval;
                        ticks = sweep_ticks(interval);
                    }
                }
            }
        }
    }

    /// Detaches the programs (unless `left_running`: pinned, for the next agent) and logs
    /// what happened in all.
    fn shutdown(mut self, left_running: bool) -> anyhow::Result<()> {
        // The kernel empties the slot anyway when the tap goes with this process; saying so
        // first keeps punts off a device that is about to vanish.
        if self.punt_tap.take().is_some()
            && let Err(err) = self.dataplane.set_punt_tap(None)
        {
            tracing::warn!("cannot clear the punt tap: {err}");
        }
        if left_running {
            tracing::info!(
                pin_path = %self.dataplane.pin_dir().map(|dir| dir.display().to_string()).unwrap_or_default(),
                "fast path left running and pinned for the next agent (--detach-on-exit removes it)"
            );
        } else {
            for attachment in std::mem::take(&mut self.attachments).into_iter().flatten() {
                let interface = attachment.interface.clone();
                if let Err(err) = self.dataplane.detach(attachment) {
                    tracing::warn!(%interface, %err, "detach failed");
                }
            }
            if let Err(err) = self.dataplane.unpin_maps() {
                tracing::warn!("cannot unpin the maps: {err}");
            }
        }
        // Every counter, zeros included: a reader (and the tests) can tell a counter that
        // stayed at zero from one that does not exist.
        let counters = self.dataplane.counters()?;
        let summary: Vec<String> = counters
            .iter()
            .map(|(counter, value)| format!("{}={value}", counter.name()))
            .collect();
        let swept = self.sweeping.swept;
        tracing::info!(
            counters = %summary.join(" "),
            swept = %format!(
                "sessions={} peers={} mappings={} expectations={}",
                swept.sessions, swept.peers, swept.mappings, swept.expectations
            ),
                        "{}",
            if left_running { "fast path left running" } else { "fast path detached" }
        );
        let alg_summary: Vec<String> = self
            .alg
            .counters()
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        tracing::info!(counters = %alg_summary.join(" "), "ftp alg stopped");
        Ok(())
    }
}

async fn read_tap(
    tap: Option<&mut PuntTap>,
    batch: &mut Vec<(u8, Vec<u8>)>,
) -> std::io::Result<BatchRead> {
    match tap {
        Some(tap) => tap.next_batch(batch).await,
        None => std::future::pending().await,
    }
}

async fn ask(queries: &QueryChannel, query: Query) -> String {
    let (reply, answer) = oneshot::channel();
    if queries.send((query, reply)).await.is_err() {
        return String::new();
    }
    answer.await.unwrap_or_default()
}

//! `gateway run`: loads and attaches the fast path, then serves until SIGINT or SIGTERM: the
//! FTP ALG (punt ring in, raw socket out), the periodic sweep, the management API on its Unix
//! socket and, if configured, Prometheus metrics.
//!
//! Everything runs on one thread (tokio's current-thread runtime): the ALG, the sweep and the
//! management requests take turns on the maps, so none of them needs a lock. Connections to
//! the management socket and the metrics port are read by their own tasks, which hand the
//! parsed request to the main loop and wait for its answer.

use std::{
    net::SocketAddrV4,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use gateway_common::{ExpectationKind, FlowKey, Rewrite, session_state};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    alg::{
        control::{AlgSettings, ControlTable},
        shell::{self, BatchRead, PuntReader, RawSender},
        store::{self, StateStore},
        tap::PuntTap,
    },
    capture,
    config::{Config, Forwarding, Hook, Punt, XdpMode},
    dataplane::{
        AttachedHook, Attachment, Dataplane, DataplaneError, LoadOptions, Sweep, Sweeper,
        monotonic_now_ns,
    },
    management::{
        ExpectationRow, Filter, FtpSessionRow, InterfaceStatus, MAX_REQUEST, Request, Response,
        SessionRow, Stats, Status, SysctlsStatus,
    },
    metrics,
    sysctl::{self, HostSettings},
    system,
};

pub struct RunOptions {
    pub config_path: PathBuf,
    /// `--xdp-mode`: XDP in this mode on both interfaces, whatever the config says.
    pub xdp_mode: Option<XdpMode>,
    pub verbose: bool,
    /// `--socket`: the management socket, instead of `[management] socket`.
    pub socket: Option<PathBuf>,
    /// With `[dataplane] pin_path`: on exit, detach and unpin everything instead of leaving
    /// the fast path running for the next agent.
    pub detach_on_exit: bool,
}

/// The FTP ALG's moving parts in the agent.
struct Alg {
    table: ControlTable,
    raw: RawSender,
    send_failures: u64,
    undecodable: u64,
    /// `gateway capture` clients: pcap records of every punted packet as it arrived and
    /// every packet the ALG sent. A client that falls behind loses records, not the ALG time.
    captures: Vec<mpsc::Sender<Vec<u8>>>,
    /// With a pinned fast path: where the control sessions are saved, before any packet they
    /// produce leaves (so a restart never finds state older than what the peers saw).
    store: Option<StateStore>,
    /// Punted packets handled, and the time spent on them (translation, state, sending):
    /// where an ALG packet's time goes, for the benchmarks.
    handled: u64,
    busy_ns: u64,
    /// Time the handled packets waited in the punt ring before the agent took them.
    waited_ns: u64,
    /// Punted packets taken from the tap and from the ring: which transport is in use.
    from_tap: u64,
    from_ring: u64,
}

impl Alg {
    /// Accounts for what a read of either transport found.
    fn took(&mut self, read: BatchRead, from_tap: bool) {
        self.undecodable += read.undecodable as u64;
        self.waited_ns += read.waited_ns;
        let packets = read.packets as u64;
        if from_tap {
            self.from_tap += packets;
        } else {
            self.from_ring += packets;
        }
    }

    /// Handles a batch of punted packets: translates them all, saves the state, then sends.
    fn handle_batch(&mut self, dataplane: &mut Dataplane, batch: &mut Vec<(u8, Vec<u8>)>) {
        let started = Instant::now();
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

    fn send_all(&mut self, outgoing: Vec<crate::alg::control::Outgoing>) {
        for packet in outgoing {
            self.capture(&packet.bytes);
            if let Err(err) = self.raw.send(&packet) {
                self.send_failures += 1;
                tracing::warn!(dst = %packet.dst, "cannot send a control packet: {err}");
            }
        }
    }

    /// Saves what changed in the control sessions (the journal; now and then a snapshot).
    fn save_state(&mut self) {
        let Some(store) = &mut self.store else {
            return;
        };
        if let Err(err) = store.save_changes(&mut self.table) {
            tracing::warn!("cannot save the ftp sessions: {err}");
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
    fn own_totals(&self) -> [(&'static str, u64); 7] {
        [
            ("send_failed", self.send_failures),
            ("undecodable", self.undecodable),
            ("handled", self.handled),
            ("busy_ns", self.busy_ns),
            ("wait_ns", self.waited_ns),
            ("punt_tap_packets", self.from_tap),
            ("punt_ring_packets", self.from_ring),
        ]
    }

    fn counters(&self) -> Vec<(String, u64)> {
        let mut counters = self.table.stats().pairs();
        counters.extend(
            self.own_totals()
                .into_iter()
                .map(|(name, value)| (format!("alg_{name}"), value)),
        );
        counters
    }
}

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
    /// Sweeps that found the session table at least 90 % full, and when that was last said.
    table_full_sweeps: u64,
    table_full_warned: Instant,
    sweeper: Sweeper,
    swept: Sweep,
    /// The punt tap's name and ifindex while TC punts to it.
    punt_tap: Option<(String, u32)>,
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

pub fn run(options: &RunOptions) -> anyhow::Result<()> {
    let config_path = &options.config_path;
    let config = Config::load(config_path)?;
    let hook = config.dataplane.hook;
    let xdp_mode = options.xdp_mode.or(config.dataplane.xdp_mode);
    if options.xdp_mode.is_some() && hook == Hook::Tc {
        bail!(
            "--xdp-mode conflicts with dataplane.hook = \"tc\" in {}",
            config_path.display()
        );
    }
    let hook = if options.xdp_mode.is_some() {
        Hook::Xdp
    } else {
        hook
    };

    system::check_privileges().map_err(|why| anyhow!(why))?;
    let mut ifindexes = [0; 2];
    for (slot, (role, name)) in ifindexes.iter_mut().zip([
        ("inside", &config.interfaces.inside),
        ("outside", &config.interfaces.outside),
    ]) {
        *slot = system::if_index(name).ok_or_else(|| {
            anyhow!(
                "interface {name:?} (interfaces.{role}) does not exist in this network namespace"
            )
        })?;
    }
    let socket_path = options
        .socket
        .clone()
        .unwrap_or_else(|| config.management_socket.clone());
    refuse_second_agent(&socket_path)?;
    // Checked before anything is loaded: unmanaged wrong values refuse the start here, in one
    // line; managed ones are set below, before the programs attach.
    let host = sysctl::Host::system()
        .context("cannot identify this boot and network namespace (for the sysctl record)")?;
    let mut host_settings = HostSettings::prepare(
        host,
        sysctl::record_path(&socket_path),
        &[
            (config.interfaces.inside.as_str(), ifindexes[0]),
            (config.interfaces.outside.as_str(), ifindexes[1]),
        ],
        config.dataplane.manage_sysctls,
    )?;
    // A pinned fast path (an earlier agent's, or this one's once attached) stays attached
    // when this start fails, and still needs them.
    host_settings.keep_on_failure(config.dataplane.pin_path.is_some());

    let loaded = Dataplane::load_with(&LoadOptions {
        verbose: options.verbose,
        max_sessions: config.max_sessions,
        pin_dir: config.dataplane.pin_path.clone(),
        punt_ring_bytes: config.dataplane.punt_ring_bytes,
    });
    let mut dataplane = loaded.inspect_err(|err| {
        if let DataplaneError::Verifier {
            log, verbose: true, ..
        } = err
        {
            eprintln!("{log}");
        }
    })?;
    if dataplane.adopted() {
        // Sessions, mappings, expectations and counters carry on; the publishes are the
        // new config's.
        dataplane.clear_publishes()?;
        tracing::info!(
            pin_path = %dataplane.pin_dir().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
            sessions = dataplane.sessions().map_or(0, |sessions| sessions.len()),
            "adopted the fast path an earlier agent left pinned"
        );
    }
    dataplane.publish(&config.publish)?;
    dataplane.configure_nat(
        config.masquerade.as_ref(),
        &config.timeouts,
        config.dataplane.forwarding,
        &config.ftp.control_ports,
    )?;
    dataplane.set_interface_roles(ifindexes[0], ifindexes[1])?;
    let punt_ring = dataplane.take_punt_ring()?;
    let raw = RawSender::open().context("cannot open the raw socket the FTP ALG sends with")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Before the programs are attached, so that they punt to it from the first packet. (An
    // adopted fast path punts to the ring meanwhile: the previous agent's tap went away
    // with it, and the kernel emptied the slot that named it.)
    let tap = if config.dataplane.punt == Punt::Tap {
        let _runtime = runtime.enter();
        let tap = PuntTap::create().context(
            "cannot create the punt tap (it needs /dev/net/tun; dataplane.punt = \"ring\" does without)",
        )?;
        dataplane.set_punt_tap(Some(tap.ifindex()))?;
        tracing::info!(
            tap = tap.name(),
            ifindex = tap.ifindex(),
            "FTP control packets are punted to the tap"
        );
        Some(tap)
    } else {
        dataplane.set_punt_tap(None)?;
        None
    };

    // Before the first translated packet: it would die in a stack that does not forward.
    host_settings.apply()?;
    let mut attachments = Vec::new();
    for name in [&config.interfaces.inside, &config.interfaces.outside] {
        let attachment = dataplane.attach(name, hook, xdp_mode)?;
        tracing::info!(interface = %attachment.interface, hook = %attachment.hook, "fast path attached");
        warn_of_veth_redirect(&attachment, config.dataplane.forwarding);
        attachments.push(Some(attachment));
    }
    // XDP forwards to the interfaces it is attached to, through a devmap keyed by ifindex.
    dataplane.set_redirect_ports(&ifindexes)?;
    log_config(&config);

    // The runtime runs on this thread: the ALG's priority is this thread's.
    apply_realtime_priority(config.ftp.realtime_priority)?;
    let state_file = dataplane
        .pin_dir()
        .is_some()
        .then(|| config.ftp.state_file.clone());
    let mut table = restore_alg(&config, state_file.as_deref(), dataplane.adopted());
    let store = match &state_file {
        Some(path) => Some(
            StateStore::create(path, &mut table)
                .with_context(|| format!("cannot save the ftp sessions to {}", path.display()))?,
        ),
        None => None,
    };
    let mut agent = Agent {
        alg: Alg {
            table,
            raw,
            send_failures: 0,
            undecodable: 0,
            captures: Vec::new(),
            store,
            handled: 0,
            busy_ns: 0,
            waited_ns: 0,
            from_tap: 0,
            from_ring: 0,
        },
        config,
        config_path: config_path.clone(),
        dataplane,
        attachments,
        ifindexes,
        hook,
        xdp_mode,
        host_settings: Some(host_settings),
        started: Instant::now(),
        table_full_sweeps: 0,
        table_full_warned: Instant::now(),
        sweeper: Sweeper::default(),
        swept: Sweep::default(),
        punt_tap: tap
            .as_ref()
            .map(|tap| (tap.name().to_owned(), tap.ifindex())),
    };
    let result = runtime.block_on(async {
        let reader = PuntReader::new(punt_ring).context("cannot watch the punt ring buffer")?;
        let listener = bind_management(&socket_path)?;
        let metrics = match agent.config.metrics_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen for metrics on {address}"))?,
            ),
            None => None,
        };
        // Handlers first: a signal that arrives once "running" is logged must stop the agent
        // cleanly, not kill it.
        let signals = Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?,
        };
        tracing::info!(
            config = %config_path.display(),
            management = %socket_path.display(),
            metrics = ?agent.config.metrics_listen,
            "gateway running; SIGINT or SIGTERM stops it"
        );
        agent.serve(reader, tap, listener, metrics, signals).await
    });
    let _ = std::fs::remove_file(&socket_path);
    let signal_name = result?;
    tracing::info!(signal = signal_name, "stopping");
    let left_running = agent.dataplane.pin_dir().is_some() && !options.detach_on_exit;
    agent.alg.save_state();
    let state_path_on_exit = state_file;
    let host_settings = agent.host_settings.take();
    let stopped = agent.shutdown(left_running);
    if let Some(host_settings) = host_settings {
        if left_running {
            // The fast path still translates, and still needs them.
            host_settings.leave();
        } else {
            host_settings.restore();
        }
    }
    if !left_running && let Some(path) = &state_path_on_exit {
        StateStore::remove(path);
    }
    stopped
}

/// The ALG's control sessions: those a previous agent saved, when its fast path was adopted;
/// otherwise none (and a stale save is removed).
fn restore_alg(config: &Config, state_file: Option<&Path>, adopted: bool) -> ControlTable {
    let settings = AlgSettings::from_config(config);
    let Some(path) = state_file else {
        return ControlTable::new(settings, shell::random_seed());
    };
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if !adopted {
        StateStore::remove(path);
        return ControlTable::new(settings, shell::random_seed());
    }
    let saved = match store::load(path) {
        Ok(Some(saved)) => saved,
        Ok(None) => return ControlTable::new(settings, shell::random_seed()),
        Err(err) => {
            tracing::warn!(path = %path.display(), "saved ftp sessions unreadable: not restored: {err}");
            return ControlTable::new(settings, shell::random_seed());
        }
    };
    match ControlTable::restore(settings.clone(), saved) {
        Some(table) => {
            tracing::info!(
                sessions = table.connections(monotonic_now_ns()).len(),
                path = %path.display(),
                "restored the ftp control sessions of the previous agent"
            );
            table
        }
        None => {
            tracing::warn!(path = %path.display(), "saved ftp sessions unreadable or of another version: not restored");
            ControlTable::new(settings, shell::random_seed())
        }
    }
}

/// `[ftp] realtime_priority` for the calling thread (the one the runtime runs on).
fn apply_realtime_priority(priority: Option<u8>) -> anyhow::Result<()> {
    system::set_realtime_priority(priority).with_context(|| match priority {
        Some(priority) => format!(
            "ftp.realtime_priority = {priority}: cannot switch the agent to SCHED_FIFO (it needs CAP_SYS_NICE and, under a cgroup v2 cpu controller, a real-time budget)"
        ),
        None => "cannot switch the agent back to the ordinary scheduler".to_owned(),
    })?;
    if let Some(priority) = priority {
        tracing::info!(priority, "agent runs at real-time priority (SCHED_FIFO)");
    }
    Ok(())
}

fn log_config(config: &Config) {
    if let Some(masquerade) = &config.masquerade {
        let list = |items: Vec<String>| items.join(",");
        tracing::info!(
            networks = %list(masquerade.networks.iter().map(ToString::to_string).collect()),
            addresses = %list(masquerade.addresses.iter().map(ToString::to_string).collect()),
            ports = %format!("{}-{}", masquerade.ports.start(), masquerade.ports.end()),
            filtering = ?masquerade.filtering,
            "masquerade"
        );
    }
    for publish in &config.publish {
        let alg = publish.alg.map_or("none", |_| "ftp");
        tracing::info!(public = %publish.public, private = %publish.private, protocol = %publish.protocol, alg, "published");
    }
    if !config.ftp.control_ports.is_empty() {
        tracing::info!(control_ports = ?config.ftp.control_ports, "ftp alg for masqueraded clients");
    }
}

/// XDP on a veth redirects translated packets to the other veth, whose peer (in another
/// namespace or container) receives them as XDP frames. The kernel delivers those only to a
/// peer that can take them: one with GRO on (`ethtool -K <peer> gro on`) or an XDP program of
/// its own. Otherwise it drops them at transmission (counted in the sending veth's
/// `ethtool -S` xdp_xmit_errors, and the xdp:xdp_devmap_xmit tracepoint), where this agent
/// cannot see the peer to check: it says so once per attach.
fn warn_of_veth_redirect(attachment: &Attachment, forwarding: Forwarding) {
    let xdp = matches!(
        attachment.hook,
        AttachedHook::XdpNative | AttachedHook::XdpGeneric
    );
    if !xdp || forwarding != Forwarding::Bpf {
        return;
    }
    if system::driver_info(&attachment.interface).is_ok_and(|info| info.driver == "veth") {
        tracing::warn!(
            interface = %attachment.interface,
            "XDP forwards to veth peers by XDP_REDIRECT: each peer needs GRO on (ethtool -K <peer> gro on) or an XDP program, or the kernel drops what is redirected to it; use hook = \"tc\" on veth, or forwarding = \"kernel\""
        );
    }
}

/// A live agent answering on the socket is not replaced; a stale socket file is.
fn refuse_second_agent(path: &Path) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another gateway agent answers at {} (one agent per socket: stop it, or set [management] socket)",
            path.display()
        );
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("cannot remove stale {}", path.display())),
    }
}

fn bind_management(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    // Root only: the API shows every connection and can flush them.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

impl Agent {
    /// Runs until SIGINT or SIGTERM; returns the signal's name.
    async fn serve(
        &mut self,
        mut reader: PuntReader,
        mut tap: Option<PuntTap>,
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
        let mut batch = Vec::new();
        let mut tap_batch = Vec::new();
        loop {
            tokio::select! {
                _ = interrupt.recv() => return Ok("SIGINT"),
                _ = terminate.recv() => return Ok("SIGTERM"),
                read = reader.next_batch(&mut batch) => {
                    let read = read.context("cannot read the punt ring buffer")?;
                    self.alg.took(read, false);
                    self.alg.handle_batch(&mut self.dataplane, &mut batch);
                }
                read = read_tap(tap.as_mut(), &mut tap_batch) => match read {
                    Ok(read) => {
                        self.alg.took(read, true);
                        self.alg.handle_batch(&mut self.dataplane, &mut tap_batch);
                    }
                    Err(err) => {
                        // Someone deleted it, most likely: the ring takes over.
                        tracing::warn!("cannot read the punt tap, TC punts to the ring from now on: {err}");
                        if let Err(err) = self.dataplane.set_punt_tap(None) {
                            tracing::warn!("cannot clear the punt tap: {err}");
                        }
                        tap = None;
                        self.punt_tap = None;
                        // What was read before the error.
                        self.alg.handle_batch(&mut self.dataplane, &mut tap_batch);
                    }
                },
                _ = ticks.tick() => self.sweep(),
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
                accepted = accept_metrics(metrics.as_ref()) => match accepted {
                    Ok(stream) => {
                        tokio::spawn(answer_metrics(stream, queries.clone()));
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

    /// Notices an interface that went away (its links went with it) and re-attaches when it
    /// is back, with a new ifindex: roles, links and host settings are redone.
    fn check_interfaces(&mut self) {
        let names = [
            self.config.interfaces.inside.clone(),
            self.config.interfaces.outside.clone(),
        ];
        for (slot, name) in names.iter().enumerate() {
            let now = system::if_index(name);
            let attached = self.attachments[slot].is_some();
            match now {
                Some(index) if attached && index == self.ifindexes[slot] => {}
                None if !attached => {}
                None => {
                    // Its links went with it; a pinned one is only a stale pin now.
                    if let Some(attachment) = self.attachments[slot].take() {
                        let _ = self.dataplane.detach(attachment);
                    }
                    tracing::warn!(interface = %name, "interface gone: the fast path waits for it to come back");
                    self.refresh_redirect_ports();
                }
                Some(index) => {
                    if let Some(attachment) = self.attachments[slot].take() {
                        let _ = self.dataplane.detach(attachment);
                    }
                    // The new interface has the host's defaults: set (or, unmanaged, check)
                    // them before the fast path translates there again.
                    if let Some(host_settings) = &mut self.host_settings
                        && let Err(err) = host_settings.interface_back(name, index)
                    {
                        tracing::warn!(interface = %name, "{err}");
                    }
                    match self.dataplane.attach(name, self.hook, self.xdp_mode) {
                        Ok(attachment) => {
                            self.ifindexes[slot] = index;
                            if let Err(err) = self
                                .dataplane
                                .set_interface_roles(self.ifindexes[0], self.ifindexes[1])
                            {
                                tracing::warn!("cannot update interface roles: {err}");
                            }
                            tracing::info!(
                                interface = %name, ifindex = index, hook = %attachment.hook,
                                "interface back: fast path re-attached"
                            );
                            warn_of_veth_redirect(&attachment, self.config.dataplane.forwarding);
                            self.attachments[slot] = Some(attachment);
                            self.refresh_redirect_ports();
                        }
                        Err(err) => tracing::warn!(interface = %name, "cannot re-attach: {err:#}"),
                    }
                }
            }
        }
    }

    /// Lets XDP redirect to exactly the interfaces attached now (a returning interface has a
    /// new ifindex; a gone one's index may be reused by another device).
    fn refresh_redirect_ports(&mut self) {
        let attached: Vec<u32> = self
            .attachments
            .iter()
            .zip(self.ifindexes)
            .filter(|(attachment, _)| attachment.is_some())
            .map(|(_, ifindex)| ifindex)
            .collect();
        if let Err(err) = self.dataplane.set_redirect_ports(&attached) {
            tracing::warn!("cannot update the XDP redirect ports: {err:#}");
        }
    }

    fn sweep(&mut self) {
        let now = monotonic_now_ns();
        self.alg.table.expire(now, &mut self.dataplane);
        // The ALG's mappings and claimed data ports have no fast-path session yet.
        self.alg.table.forget_used(&mut self.dataplane);
        self.alg.save_state();
        let held = self.alg.table.held_endpoints(now);
        match self.dataplane.sweep(&mut self.sweeper, now, &held) {
            Ok(sweep) => {
                if sweep != Sweep::default() {
                    tracing::debug!(?sweep, "swept expired state");
                }
                self.swept += sweep;
            }
            Err(err) => tracing::warn!(error = %err, "sweep failed"),
        }
        // An LRU table never refuses an entry: when full it evicts the least recently used
        // connection, whose next packet then needs a new session. Say so before it bites.
        let (entries, capacity) = self.dataplane.session_occupancy();
        if entries as u64 * 10 >= u64::from(capacity) * 9 {
            self.table_full_sweeps += 1;
            if self.table_full_sweeps == 1
                || self.table_full_warned.elapsed() > Duration::from_secs(60)
            {
                self.table_full_warned = Instant::now();
                tracing::warn!(
                    entries,
                    capacity,
                    "session table nearly full: the least recently used connections are evicted first; raise [sessions] max"
                );
            }
        }
    }

    fn handle(&mut self, request: Request) -> anyhow::Result<serde_json::Value> {
        let now = monotonic_now_ns();
        let value = match request {
            Request::Status => serde_json::to_value(self.status()?)?,
            Request::Sessions { ftp: false, filter } => {
                let filter: Filter = filter
                    .as_deref()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|why: String| anyhow!(why))?;
                let rows: Vec<SessionRow> = self
                    .dataplane
                    .sessions()?
                    .into_iter()
                    .filter_map(|(key, session)| {
                        let (original, translated) = tuples(&key, &session);
                        let proto = proto_name(key.proto);
                        filter
                            .matches(proto, &[original.0, original.1, translated.0, translated.1])
                            .then(|| SessionRow {
                                proto: proto.to_owned(),
                                original: format!("{} -> {}", original.0, original.1),
                                translated: format!("{} -> {}", translated.0, translated.1),
                                state: state_name(key.proto, session.state).to_owned(),
                                idle_seconds: now.saturating_sub(session.last_seen_ns)
                                    / 1_000_000_000,
                                packets: session.packets,
                                bytes: session.bytes,
                            })
                    })
                    .collect();
                serde_json::to_value(rows)?
            }
            Request::Sessions { ftp: true, filter } => {
                let filter: Filter = filter
                    .as_deref()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|why: String| anyhow!(why))?;
                let rows: Vec<FtpSessionRow> = self
                    .alg
                    .table
                    .connections(now)
                    .into_iter()
                    .filter(|info| {
                        filter.matches(
                            "tcp",
                            &[info.client, info.client_seen, info.server, info.server_seen],
                        )
                    })
                    .map(|info| FtpSessionRow {
                        client: info.client.to_string(),
                        client_seen: info.client_seen.to_string(),
                        server: info.server.to_string(),
                        server_seen: info.server_seen.to_string(),
                        user: info.user.unwrap_or_else(|| "-".into()),
                        state: info.phase.to_owned(),
                        pending_expectations: info
                            .expectations
                            .iter()
                            .filter(|key| self.dataplane.expectation_exists(**key).unwrap_or(false))
                            .count(),
                        age_seconds: info.age_ns / 1_000_000_000,
                    })
                    .collect();
                serde_json::to_value(rows)?
            }
            Request::Expectations => {
                let rows: Vec<ExpectationRow> = self
                    .dataplane
                    .expectations()?
                    .into_iter()
                    .map(|(key, entry)| {
                        let kind = ExpectationKind::try_from(entry.kind);
                        ExpectationRow {
                            kind: kind.map_or("unknown", ExpectationKind::name).into(),
                            endpoint: key.endpoint.socket().to_string(),
                            peer: std::net::Ipv4Addr::from(key.peer).to_string(),
                            target: match kind {
                                Ok(ExpectationKind::Outbound) => {
                                    format!(
                                        "source {}",
                                        std::net::Ipv4Addr::from(entry.target.addr)
                                    )
                                }
                                Ok(ExpectationKind::HairpinToServer) => {
                                    format!("{} from the peer's mapping", entry.target.socket())
                                }
                                Ok(ExpectationKind::HairpinToClient) => format!(
                                    "{} from {}",
                                    entry.target.socket(),
                                    std::net::Ipv4Addr::from(entry.source)
                                ),
                                Ok(ExpectationKind::Inbound) | Err(_) => {
                                    entry.target.socket().to_string()
                                }
                            },
                            expires_in_seconds: (entry.expires_ns as i128 - now as i128)
                                .clamp(i64::MIN as i128, i64::MAX as i128)
                                as i64
                                / 1_000_000_000,
                        }
                    })
                    .collect();
                serde_json::to_value(rows)?
            }
            Request::Stats => serde_json::to_value(Stats {
                fastpath: self
                    .dataplane
                    .counters()?
                    .into_iter()
                    .map(|(counter, value)| (counter.name().to_owned(), value))
                    .collect(),
                alg: self
                    .alg_counters()
                    .into_iter()
                    .chain([(
                        "session_table_nearly_full_sweeps".to_owned(),
                        self.table_full_sweeps,
                    )])
                    .collect(),
            })?,
            Request::Reload => serde_json::to_value(self.reload()?)?,
            Request::Flush { ftp: true } => {
                let removed = self.alg.table.flush(&mut self.dataplane);
                tracing::info!(removed, "ftp control sessions flushed");
                serde_json::json!({ "removed": removed })
            }
            // Answered by its connection's task, which streams records instead of JSON.
            Request::Capture => bail!("capture is a stream: use `gateway capture`"),
            Request::Flush { ftp: false } => {
                let removed = self.dataplane.flush_sessions()?;
                tracing::info!(removed, "session table flushed");
                serde_json::json!({ "removed": removed })
            }
        };
        Ok(value)
    }

    fn status(&self) -> anyhow::Result<Status> {
        let now = monotonic_now_ns();
        let policy = &self.config.ftp.policy;
        Ok(Status {
            pid: std::process::id(),
            config: self.config_path.display().to_string(),
            uptime_seconds: self.started.elapsed().as_secs(),
                        interfaces: self
                .attachments
                .iter()
                .zip(["inside", "outside"])
                .zip([&self.config.interfaces.inside, &self.config.interfaces.outside])
                .zip(self.ifindexes)
                .map(|(((attachment, role), name), ifindex)| InterfaceStatus {
                    role: role.into(),
                    name: name.clone(),
                    ifindex,
                    hook: attachment
                        .as_ref()
                        .map_or("gone".into(), |attachment| attachment.hook.to_string()),
                })
                .collect(),
            programs: self.dataplane.program_ids(),
            sessions: self.dataplane.sessions()?.len(),
            ftp_sessions: self.alg.table.connections(now).len(),
            expectations: self.dataplane.expectations()?.len(),
            publishes: self.config.publish.len(),
            punt: match &self.punt_tap {
                Some((name, ifindex)) => {
                    format!("tap {name} (ifindex {ifindex}) for TC, ring for XDP and as fallback")
                }
                None => "ring".to_owned(),
            },
            masquerade: self.config.masquerade.as_ref().map(|masquerade| {
                format!(
                    "{} behind {} ports {}-{}",
                    masquerade
                        .networks
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    masquerade
                        .addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    masquerade.ports.start(),
                    masquerade.ports.end()
                )
            }),
            policy: format!(
                "on_violation={:?} tls={:?} anonymous={} pipelining={} deny_commands={} allow_users={} deny_users={}",
                policy.on_violation,
                policy.tls,
                policy.anonymous,
                policy.pipelining,
                policy.deny_commands.len(),
                policy.allow_users.len(),
                policy.deny_users.len()
            )
            .to_lowercase(),
            sysctls: self
                .host_settings
                .as_ref()
                .map(|host_settings| SysctlsStatus {
                    managed: host_settings.managed(),
                    record: host_settings.record_path().display().to_string(),
                    settings: host_settings.status(),
                })
                .unwrap_or_default(),
        })
    }

    /// Re-reads the config and applies what changed, keeping every session. An invalid file,
    /// or a change that needs a restart, is refused and the running configuration stays.
    fn reload(&mut self) -> anyhow::Result<Vec<String>> {
        let new = Config::load(&self.config_path)
            .map_err(|err| anyhow!("{err}; the running configuration stays"))?;
        let old = &self.config;
        for (what, changed) in [
            ("interfaces", new.interfaces != old.interfaces),
            ("dataplane", new.dataplane != old.dataplane),
            ("sessions.max", new.max_sessions != old.max_sessions),
            ("management", new.management_socket != old.management_socket),
            ("metrics", new.metrics_listen != old.metrics_listen),
        ] {
            if changed {
                bail!("{what} changed: that needs a restart of the gateway; nothing was applied");
            }
        }
        // Before anything is applied: the sysctls may have been changed behind the agent's
        // back. Managed, they are set again (and said); unmanaged, a wrong one refuses the
        // reload as it would refuse a start.
        let mut changes = match &mut self.host_settings {
            Some(host_settings) => host_settings
                .recheck()
                .map_err(|err| anyhow!("{err}; nothing was applied"))?,
            None => Vec::new(),
        };
        // First, as the one change that can still fail on its own: nothing is applied then.
        if new.ftp.realtime_priority != old.ftp.realtime_priority {
            apply_realtime_priority(new.ftp.realtime_priority)?;
            changes.push(format!(
                "agent priority {}",
                new.ftp
                    .realtime_priority
                    .map_or("ordinary".to_owned(), |priority| format!(
                        "SCHED_FIFO {priority}"
                    ))
            ));
        }
        let removed: Vec<_> = old
            .publish
            .iter()
            .filter(|publish| !new.publish.contains(publish))
            .cloned()
            .collect();
        let added: Vec<_> = new
            .publish
            .iter()
            .filter(|publish| !old.publish.contains(publish))
            .cloned()
            .collect();
        if !removed.is_empty() {
            self.dataplane.unpublish(&removed)?;
            changes.push(format!("{} publish entries removed", removed.len()));
        }
        if !added.is_empty() {
            self.dataplane.publish(&added)?;
            changes.push(format!("{} publish entries added", added.len()));
        }
        if new.masquerade != old.masquerade
            || new.timeouts != old.timeouts
            || new.ftp.control_ports != old.ftp.control_ports
        {
            self.dataplane.configure_nat(
                new.masquerade.as_ref(),
                &new.timeouts,
                new.dataplane.forwarding,
                &new.ftp.control_ports,
            )?;
            self.dataplane
                .set_interface_roles(self.ifindexes[0], self.ifindexes[1])?;
            changes.push("masquerade, timeouts and control ports applied".into());
        }
        if new.ftp != old.ftp || new.publish != old.publish || new.timeouts != old.timeouts {
            self.alg.table.set_settings(AlgSettings::from_config(&new));
            changes.push("ftp settings and policies applied (running sessions included)".into());
        }
        if new.sweep_interval != old.sweep_interval {
            changes.push(format!("sweep interval {}s", new.sweep_interval));
        }
        if changes.is_empty() {
            changes.push("no change".into());
        }
        tracing::info!(changes = %changes.join("; "), "configuration reloaded");
        self.config = new;
        Ok(changes)
    }

    /// The ALG's counters, with the packets the punt tap dropped.
    fn alg_counters(&self) -> Vec<(String, u64)> {
        let mut counters = self.alg.counters();
        if let Some(dropped) = self.punt_tap_dropped() {
            counters.push(("alg_punt_tap_dropped".into(), dropped));
        }
        counters
    }

    /// Packets the punt tap dropped (its queue full: the agent fell behind), which only the
    /// kernel's interface statistics know; none without a tap.
    fn punt_tap_dropped(&self) -> Option<u64> {
        self.punt_tap
            .as_ref()
            .map(|(name, _)| system::tx_dropped(name).unwrap_or(0))
    }

    fn snapshot(&self) -> metrics::Snapshot {
        let now = monotonic_now_ns();
        let stats = self.alg.table.stats();
        metrics::Snapshot {
            fastpath: self.dataplane.counters().unwrap_or_default(),
            alg: stats
                .totals()
                .into_iter()
                .chain(self.alg.own_totals())
                .chain(
                    self.punt_tap_dropped()
                        .map(|dropped| ("punt_tap_dropped", dropped)),
                )
                .collect(),
            violations: stats.violations().collect(),
            sessions: self
                .dataplane
                .sessions()
                .map_or(0, |sessions| sessions.len()),
            ftp_sessions: self.alg.table.connections(now).len(),
            expectations: self
                .dataplane
                .expectations()
                .map_or(0, |expectations| expectations.len()),
            uptime_seconds: self.started.elapsed().as_secs(),
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
        let swept = self.swept;
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

fn sweep_ticks(seconds: u64) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(Duration::from_secs(seconds));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
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

async fn accept_metrics(listener: Option<&TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// One management request: read it whole (the client closes its side), ask the main loop,
/// write the answer.
async fn answer_management(mut stream: UnixStream, queries: QueryChannel) {
    let mut request = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        (&mut stream)
            .take(MAX_REQUEST as u64 + 1)
            .read_to_end(&mut request),
    )
    .await;
    let answer = match read {
        Ok(Ok(_)) if request.len() <= MAX_REQUEST => {
            match serde_json::from_slice::<Request>(&request) {
                Ok(Request::Capture) => {
                    stream_capture(stream, queries).await;
                    return;
                }
                Ok(request) => ask(&queries, Query::Api(request)).await,
                Err(err) => serde_json::to_string(&Response::Error {
                    message: format!("bad request: {err}"),
                })
                .unwrap_or_default(),
            }
        }
        _ => serde_json::to_string(&Response::Error {
            message: "request too long or not received".into(),
        })
        .unwrap_or_default(),
    };
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `gateway capture`: a pcap file header, then records until the client goes away.
async fn stream_capture(mut stream: UnixStream, queries: QueryChannel) {
    let (records, mut incoming) = mpsc::channel(4096);
    ask(&queries, Query::Capture(records)).await;
    if stream.write_all(&capture::file_header()).await.is_err() {
        return;
    }
    while let Some(record) = incoming.recv().await {
        if stream.write_all(&record).await.is_err() {
            break;
        }
    }
}

/// A Prometheus scrape: `GET /metrics` over HTTP/1.x, one request per connection; anything
/// else is 404.
async fn answer_metrics(stream: tokio::net::TcpStream, queries: QueryChannel) {
    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
        let queries = queries.clone();
        async move {
            let wanted =
                request.method() == hyper::Method::GET && request.uri().path() == "/metrics";
            if wanted {
                let body = ask(&queries, Query::Metrics).await;
                hyper::Response::builder()
                    .header(hyper::header::CONTENT_TYPE, metrics::CONTENT_TYPE)
                    .body(Full::new(Bytes::from(body)))
            } else {
                hyper::Response::builder()
                    .status(hyper::StatusCode::NOT_FOUND)
                    .body(Full::default())
            }
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(err) = connection.await {
        tracing::debug!("metrics connection: {err}");
    }
}

async fn ask(queries: &QueryChannel, query: Query) -> String {
    let (reply, answer) = oneshot::channel();
    if queries.send((query, reply)).await.is_err() {
        return String::new();
    }
    answer.await.unwrap_or_default()
}

/// The original and translated (source, destination) of one session-table entry.
fn tuples(
    key: &FlowKey,
    session: &gateway_common::Session,
) -> ((SocketAddrV4, SocketAddrV4), (SocketAddrV4, SocketAddrV4)) {
    let endpoint =
        |addr: [u8; 4], port: [u8; 2]| SocketAddrV4::new(addr.into(), u16::from_be_bytes(port));
    let src = endpoint(key.src, key.src_port);
    let dst = endpoint(key.dst, key.dst_port);
    let own = endpoint(session.addr, session.port);
    let translated = match Rewrite::try_from(session.rewrite) {
        Ok(Rewrite::Source) => (own, dst),
        Ok(Rewrite::Destination) => (src, own),
        Ok(Rewrite::Both) => (own, endpoint(session.peer_addr, session.peer_port)),
        // Not a value the fast path writes: shown as it is keyed, untranslated.
        Err(_) => (src, dst),
    };
    ((src, dst), translated)
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        gateway_common::IPPROTO_TCP => "tcp",
        gateway_common::IPPROTO_UDP => "udp",
        _ => "icmp",
    }
}

fn state_name(proto: u8, state: u8) -> &'static str {
    if proto != gateway_common::IPPROTO_TCP {
        return "-";
    }
    if state & session_state::RST != 0 {
        "reset"
    } else if state & session_state::FIN != 0 {
        "closing"
    } else if state & session_state::ESTABLISHED != 0 {
        "established"
    } else {
        "syn"
    }
}

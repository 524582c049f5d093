//! `gateway run`'s start-up: checks, host settings, loading (or adopting) the fast path,
//! attaching it, restoring the ALG's sessions, then handing over to the event loop; and,
//! once it returns, the way out.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, anyhow, bail};
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{SignalKind, signal},
};

use super::{Agent, Signals, alg::Alg, sweep::Sweeping};
use crate::{
    alg::{
        control::{AlgSettings, ControlTable},
        sender::RawSender,
        shell::{self, PuntReader},
        store::{self, StateStore},
        tap::PuntTap,
    },
    config::{Config, Forwarding, Hook, Punt, XdpMode},
    dataplane::{
        AttachedHook, Attachment, Dataplane, DataplaneError, LoadOptions, monotonic_now_ns,
    },
    ha::RoleState,
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
    // A node of a pair starts as a standby, whose interfaces do not forward until it is
    // promoted (`HostSettings::set_standby`).
    if config.ha.is_some() {
        host_settings.start_as_standby();
    }
    host_settings.apply()?;
    let mut attachments = Vec::new();
    let ha = config.ha.as_ref().map(|ha| {
        // Attach on promotion: the maps are filled above, the programs wait for keepalived.
        tracing::info!(
            node_id = ha.node_id, peer = %ha.peer,
            "ha: starting as backup: the fast path stays detached until `gateway ha master`"
        );
        RoleState::starting()
    });
    if ha.is_some() {
        attachments = vec![None, None];
    } else {
        for name in [&config.interfaces.inside, &config.interfaces.outside] {
            let attachment = dataplane.attach(name, hook, xdp_mode)?;
            tracing::info!(interface = %attachment.interface, hook = %attachment.hook, "fast path attached");
            warn_of_veth_redirect(&attachment, config.dataplane.forwarding);
            attachments.push(Some(attachment));
        }
        // XDP forwards to the interfaces it is attached to, through a devmap keyed by ifindex.
        dataplane.set_redirect_ports(&ifindexes)?;
    }
    log_config(&config);

    // The runtime runs on this thread: the ALG's priority is this thread's.
    apply_realtime_priority(config.ftp.realtime_priority)?;
    let mut cpu_latency = None;
    apply_cpu_wakeup_latency(&mut cpu_latency, config.ftp.cpu_wakeup_latency_us)?;
    let state_file = dataplane
        .pin_dir()
        .is_some()
        .then(|| config.ftp.state_file.clone());
    let mut table = restore_alg(&config, state_file.as_deref(), dataplane.adopted());
    // The pinned pure-ACK entries agree with the restored sessions (and go with the others).
    table.adopt_control_acks(&mut dataplane);
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
            sync: None,
            handled: 0,
            busy_ns: 0,
            waited_ns: 0,
            from_tap: 0,
            from_ring: 0,
            io: Default::default(),
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
        sweeping: Sweeping::new(),
        punt_tap: tap
            .as_ref()
            .map(|tap| (tap.name().to_owned(), tap.ifindex())),
        ha,
        sync: None,
        cpu_latency,
    };
    let result = runtime.block_on(async {
        agent.start_sync()?;
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

/// `[ftp] cpu_wakeup_latency_us`: the request in `held` changed to `us`, opened, or withdrawn
/// (`None`). On an error `held` is as it was.
pub(super) fn apply_cpu_wakeup_latency(
    held: &mut Option<system::CpuLatencyRequest>,
    us: Option<u32>,
) -> anyhow::Result<()> {
    let Some(us) = us else {
        *held = None;
        return Ok(());
    };
    let context = || {
        format!(
            "ftp.cpu_wakeup_latency_us = {us}: cannot hold a request on /dev/cpu_dma_latency (the kernel's CPU latency QoS; it needs root or write access to the device)"
        )
    };
    match held {
        Some(request) => request.update(us).with_context(context)?,
        None => *held = Some(system::CpuLatencyRequest::hold(us).with_context(context)?),
    }
    tracing::info!(
        us,
        "idle CPUs held to this wake-up latency while the agent runs"
    );
    Ok(())
}

/// `[ftp] realtime_priority` for the calling thread (the one the runtime runs on).
pub(super) fn apply_realtime_priority(priority: Option<u8>) -> anyhow::Result<()> {
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
pub(super) fn warn_of_veth_redirect(attachment: &Attachment, forwarding: Forwarding) {
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

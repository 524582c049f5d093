//! `gateway`: the agent and its command line.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use gateway_user::{
    alg::{
        control::{AlgSettings, ControlTable},
        shell::{self, PuntReader, RawSender},
    },
    config::{Config, Hook, XdpMode},
    dataplane::{Dataplane, DataplaneError, Sweep, Sweeper, monotonic_now_ns},
    system::{self, SysctlGuard},
};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "NAT gateway with an eBPF fast path and an FTP ALG"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the fast path, attach it to the configured interfaces and run until SIGINT or
    /// SIGTERM, then detach.
    Run {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Use XDP in this mode on both interfaces, whatever `dataplane.hook` says.
        #[arg(long, value_enum)]
        xdp_mode: Option<XdpMode>,
        /// On a verifier rejection, print the verifier's log.
        #[arg(long)]
        verbose: bool,
    },
    /// Validate a configuration file and exit.
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Run {
            config,
            xdp_mode,
            verbose,
        } => run(&config, xdp_mode, verbose),
        Command::Check { config } => Config::load(&config)
            .map(|config| {
                println!(
                    "ok: {} publish entr{}",
                    config.publish.len(),
                    if config.publish.len() == 1 {
                        "y"
                    } else {
                        "ies"
                    }
                )
            })
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line that names the problem; `{:#}` joins the context chain.
            eprintln!("gateway: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    config_path: &std::path::Path,
    xdp_mode_flag: Option<XdpMode>,
    verbose: bool,
) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let hook = config.dataplane.hook;
    let xdp_mode = xdp_mode_flag.or(config.dataplane.xdp_mode);
    if xdp_mode_flag.is_some() && hook == Hook::Tc {
        bail!(
            "--xdp-mode conflicts with dataplane.hook = \"tc\" in {}",
            config_path.display()
        );
    }
    let hook = if xdp_mode_flag.is_some() {
        Hook::Xdp
    } else {
        hook
    };

    system::check_privileges().map_err(|why| anyhow!(why))?;
    let mut indexes = Vec::new();
    for (role, name) in [
        ("inside", &config.interfaces.inside),
        ("outside", &config.interfaces.outside),
    ] {
        let Some(index) = system::if_index(name) else {
            bail!(
                "interface {name:?} (interfaces.{role}) does not exist in this network namespace"
            );
        };
        indexes.push(index);
    }

    let mut dataplane = Dataplane::load(verbose, config.max_sessions).inspect_err(|err| {
        if let DataplaneError::Verifier {
            log, verbose: true, ..
        } = err
        {
            eprintln!("{log}");
        }
    })?;
    dataplane.publish(&config.publish)?;
    dataplane.configure_nat(
        config.masquerade.as_ref(),
        &config.timeouts,
        config.dataplane.forwarding,
        &config.ftp.control_ports,
    )?;
    let punt_ring = dataplane.take_punt_ring()?;
    let raw = RawSender::open().context("cannot open the raw socket the FTP ALG sends with")?;
    dataplane.set_interface_roles(indexes[0], indexes[1])?;

    let mut attachments = Vec::new();
    for name in [&config.interfaces.inside, &config.interfaces.outside] {
        let attachment = dataplane.attach(name, hook, xdp_mode)?;
        tracing::info!(interface = %attachment.interface, hook = %attachment.hook, "fast path attached");
        attachments.push(attachment);
    }
    // Translation happens at ingress, before the kernel routes. The translated packets the
    // stack still routes (all of XDP's; TC's expiring TTLs and oversized packets) reach it on
    // the inside interface already carrying the public source address, usually the gateway's
    // own. The kernel drops such packets as martians unless accept_local is on, and strict
    // reverse-path filtering drops them too (loose mode still drops sources with no route at
    // all). Both are restored on a clean exit.
    let mut sysctls = Vec::new();
    for name in [&config.interfaces.inside, &config.interfaces.outside] {
        sysctls.push(
            SysctlGuard::set_ipv4_conf(name, "accept_local", "1")
                .context("cannot set accept_local")?,
        );
        sysctls.extend(system::relax_strict_rp_filter(name).context("cannot adjust rp_filter")?);
    }

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
    tracing::info!(config = %config_path.display(), "gateway running; SIGINT or SIGTERM stops it");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let interval = std::time::Duration::from_secs(config.sweep_interval);
    let mut alg = Alg {
        table: ControlTable::new(AlgSettings::from_config(&config), shell::random_seed()),
        raw,
        send_failures: 0,
        undecodable: 0,
    };
    let (signal_name, swept) = runtime.block_on(async {
        let reader = PuntReader::new(punt_ring).context("cannot watch the punt ring buffer")?;
        serve(&mut dataplane, &mut alg, reader, interval).await
    })?;
    tracing::info!(signal = signal_name, "stopping");

    for attachment in attachments {
        let interface = attachment.interface.clone();
        if let Err(err) = dataplane.detach(attachment) {
            tracing::warn!(%interface, %err, "detach failed");
        }
    }
    let counters = dataplane.counters()?;
    let summary: Vec<String> = counters
        .iter()
        .filter(|(_, value)| *value > 0)
        .map(|(counter, value)| format!("{}={value}", counter.name()))
        .collect();
    tracing::info!(
        counters = %summary.join(" "),
        swept = %format!(
            "sessions={} peers={} mappings={} expectations={}",
            swept.sessions, swept.peers, swept.mappings, swept.expectations
        ),
                "fast path detached"
    );
    let alg_summary: Vec<String> = alg
        .table
        .stats()
        .pairs()
        .iter()
        .filter(|(_, value)| *value > 0)
        .map(|(name, value)| format!("{name}={value}"))
        .chain(
            [
                ("alg_send_failed", alg.send_failures),
                ("alg_undecodable", alg.undecodable),
            ]
            .iter()
            .filter(|(_, value)| *value > 0)
            .map(|(name, value)| format!("{name}={value}")),
        )
        .collect();
    tracing::info!(counters = %alg_summary.join(" "), "ftp alg stopped");
    Ok(())
}

/// The FTP ALG's moving parts in the agent.
struct Alg {
    table: ControlTable,
    raw: RawSender,
    send_failures: u64,
    undecodable: u64,
}

impl Alg {
    fn handle(&mut self, dataplane: &mut Dataplane, reason: u8, packet: &[u8]) {
        let now = monotonic_now_ns();
        for outgoing in self.table.on_packet(reason, packet, now, dataplane) {
            if let Err(err) = self.raw.send(&outgoing) {
                self.send_failures += 1;
                tracing::warn!(dst = %outgoing.dst, "cannot send a control packet: {err}");
            }
        }
    }
}

/// Runs until SIGINT or SIGTERM, sweeping expired state every `interval`. Returns the
/// signal's name and what the sweeps removed in all.
async fn serve(
    dataplane: &mut Dataplane,
    alg: &mut Alg,
    mut reader: PuntReader,
    interval: std::time::Duration,
) -> anyhow::Result<(&'static str, Sweep)> {
    let mut batch = Vec::new();
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut sweeper = Sweeper::default();
    let mut total = Sweep::default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(("SIGINT", total)),
            _ = terminate.recv() => return Ok(("SIGTERM", total)),
            read = reader.next_batch(&mut batch) => {
                alg.undecodable += read.context("cannot read the punt ring buffer")? as u64;
                for (reason, packet) in batch.drain(..) {
                    alg.handle(dataplane, reason, &packet);
                }
            }
                        _ = ticks.tick() => {
                let now = monotonic_now_ns();
                alg.table.expire(now, dataplane);
                // The ALG's mappings and claimed data ports have no fast-path session yet.
                let held = alg.table.held_endpoints(now);
                match dataplane.sweep(&mut sweeper, now, &held) {
                    Ok(sweep) => {
                        if sweep != Sweep::default() {
                            tracing::debug!(?sweep, "swept expired state");
                        }
                        total += sweep;
                    }
                    Err(err) => tracing::warn!(error = %err, "sweep failed"),
                }
            }
        }
    }
}

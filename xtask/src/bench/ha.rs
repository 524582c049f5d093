//! High availability beside Linux, in the HA lab of the tests (`gateway_tests::ha_lab`: an
//! inside and an outside segment, two router namespaces on both, a sync link between them,
//! keepalived in each as the packaged example has it):
//!
//! - **gateway pair**: the agent on each node with the state sync (`[ha] key_file`), the
//!   packaged notify script;
//! - **Linux**: nftables SNAT of the inside network to the public virtual address (what a
//!   pair must use: `masquerade` would pick each node's own address) with the `nf_nat_ftp`
//!   helper module loaded, and conntrackd (FTFW over UDP on the sync link, external cache)
//!   driven by keepalived through the notify actions of conntrackd's own
//!   `primary-backup.sh` (master: commit the external cache, flush, resync, bulk send;
//!   backup: shorten timers, request a resync).
//!
//! Per run and setup, on a pair of its own: the sync's cost (TCP throughput through the
//! active with a table of short flows, beside the same without a standby: the gateway's
//! standby not running, Linux without conntrackd), the sync's throughput (a burst of new
//! UDP flows created on the active: flows per second until the standby holds them all),
//! and the failover gap (a paced TCP transfer through the masquerade, the active's links cut
//! and its daemons killed: the longest pause the receiver saw).

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gateway_tests::{
    TempFile,
    gateway::GatewayProcess,
    ha_flows::{EchoServers, short_udp_flows},
    ha_lab::{HaLab, Keepalived, WAN_HOST, notify_script},
    netns::unique_prefix,
};

use super::Options;

mod linux;
mod report;
mod stream;

use linux::{conntrackd_notify, linux_router, start_conntrackd};
use report::report;
pub(super) use report::splice_section;
use stream::Stream;

const ECHO_TCP: u16 = 7030;
const ECHO_UDP: u16 = 7031;
/// The burst's own echo servers: its flows are new 5-tuples even where a port of the
/// table's flows comes round again.
const BURST_TCP: u16 = 7040;
const BURST_UDP: u16 = 7041;
const IPERF_PORT: u16 = 7033;
const KEY: &str = "the benchmark pair's shared sync key, long enough\n";
/// Short UDP flows in the table while the sync's cost is measured.
const TABLE_FLOWS: usize = 2000;
/// New UDP flows of the sync-throughput burst.
const BURST_FLOWS: usize = 3000;
/// How long a transfer or a standby may take before the run counts as failed.
const BOUND: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pair {
    Gateway,
    Conntrackd,
}

impl Pair {
    const ALL: [Pair; 2] = [Pair::Gateway, Pair::Conntrackd];

    fn name(self) -> &'static str {
        match self {
            Pair::Gateway => "gateway pair (state sync)",
            Pair::Conntrackd => "Linux: nftables SNAT + nf_nat_ftp, keepalived + conntrackd",
        }
    }
}

/// One run of one setup.
#[derive(Default, Clone)]
struct HaSamples {
    /// Longest pause of the transfer across the failover, seconds; `None`: it never resumed.
    gap: Vec<Option<f64>>,
    /// Seconds from the kill until node 2 carried the state in its data path; `None`: not
    /// within the bound.
    takeover: Vec<Option<f64>>,
    /// Flows per second the standby took in; `None`: it did not hold them all in time.
    sync_rate: Vec<Option<f64>>,
    /// TCP Gbit/s through the active with the sync on, and without a standby.
    with_sync: Vec<f64>,
    without_sync: Vec<f64>,
}

/// Every setup, `options.runs` times, alternating: the report's section.
pub(super) fn run(gateway: &Path, options: &Options) -> anyhow::Result<String> {
    // nf_nat_ftp, as the baseline has it; in the root namespace's kernel, which the
    // lab's namespaces share (a module is not per namespace).
    let _ = std::process::Command::new("modprobe")
        .arg("nf_nat_ftp")
        .status();
    raise_open_files();
    let mut samples = vec![HaSamples::default(); Pair::ALL.len()];
    for run in 0..options.runs {
        for (index, pair) in Pair::ALL.into_iter().enumerate() {
            println!(
                "bench: ha run {}/{}: {}",
                run + 1,
                options.runs,
                pair.name()
            );
            let without = measure_without_sync(pair, gateway, options.seconds)
                .with_context(|| format!("{}: throughput without a standby", pair.name()))?;
            let PairFigures {
                gbps: with,
                rate,
                gap,
                takeover,
            } = measure_pair(pair, gateway, options.seconds)
                .with_context(|| format!("{}: the pair", pair.name()))?;
            println!(
                "bench:   tcp {with:.2} Gbit/s with the sync, {without:.2} without; {}; failover gap {}",
                rate.map_or("standby did not keep up".into(), |rate| format!(
                    "{rate:.0} new flows/s synced"
                )),
                gap.map_or("(never resumed)".into(), |gap| format!("{gap:.2} s"))
            );
            samples[index].with_sync.push(with);
            samples[index].without_sync.push(without);
            samples[index].sync_rate.push(rate);
            samples[index].gap.push(gap);
            samples[index].takeover.push(takeover);
        }
    }
    Ok(report(&samples, options))
}

/// The burst holds thousands of UDP sockets open at once: the soft limit on open files
/// goes up to the hard one.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A pair (or a lone active node) on a lab of its own; everything is stopped and removed on
/// drop, in reverse order, also when a measurement fails.
struct PairLab {
    lab: HaLab,
    dir: PathBuf,
    keepalived: Vec<Keepalived>,
    gateways: Vec<GatewayProcess>,
    conntrackd: Vec<Daemon>,
    _files: Vec<TempFile>,
}

impl Drop for PairLab {
    fn drop(&mut self) {
        self.keepalived.clear();
        self.gateways.clear();
        self.conntrackd.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A daemon in the foreground, its own process group, killed (the group) on drop.
struct Daemon(Option<Child>);

impl Daemon {
    fn kill_hard(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

impl PairLab {
    /// The lab with `pair` on node 1 (and on node 2 if `standby`), node 1 made master by
    /// keepalived and node 2 (if any) its backup.
    fn up(pair: Pair, gateway: &Path, standby: bool) -> anyhow::Result<PairLab> {
        let prefix = unique_prefix();
        let lab = HaLab::up(&prefix)?;
        let dir = std::env::temp_dir().join(format!("{prefix}-ha-bench"));
        std::fs::create_dir_all(&dir)?;
        let mut this = PairLab {
            lab,
            dir,
            keepalived: Vec::new(),
            gateways: Vec::new(),
            conntrackd: Vec::new(),
            _files: Vec::new(),
        };
        let count = if standby { 2 } else { 1 };
        for index in 0..count {
            let node = &this.lab.nodes[index];
            let notify = match pair {
                Pair::Gateway => {
                    let key = TempFile::write(&format!("{prefix}-gw{}.key", node.id), KEY);
                    let config = TempFile::write(
                        &format!("{prefix}-gw{}.toml", node.id),
                        &this.lab.synced_gateway_config(node, &key.0),
                    );
                    let process =
                        GatewayProcess::start_binary(gateway, &node.netns, &config.0, &[])?;
                    let notify = format!(
                        "{} {} {}",
                        notify_script().display(),
                        process.socket().display(),
                        gateway.display()
                    );
                    this.gateways.push(process);
                    this._files.extend([key, config]);
                    notify
                }
                Pair::Conntrackd => {
                    let node_dir = this.dir.join(format!("gw{}", node.id));
                    linux_router(node)?;
                    if standby {
                        this.conntrackd
                            .push(start_conntrackd(&this.lab, node, &node_dir)?);
                    }
                    conntrackd_notify(&node_dir, standby)?.display().to_string()
                }
            };
            let priority = if node.id == 1 { 150 } else { 100 };
            let keepalived = Keepalived::start(
                &node.netns,
                &this.dir.join(format!("keepalived-gw{}", node.id)),
                &this.lab.keepalived_config(node, priority, &notify),
            )?;
            let state = if node.id == 1 { "MASTER" } else { "BACKUP" };
            // Both instances of the sync group.
            for instance in ["inside", "outside"] {
                keepalived
                    .wait_for_log(
                        &format!("({instance}) Entering {state} STATE"),
                        Duration::from_secs(20),
                    )
                    .with_context(|| format!("gw{} {state}", node.id))?;
            }
            this.keepalived.push(keepalived);
        }
        Ok(this)
    }

    /// The flows (connections) the active and the standby hold: (active's, standby's).
    fn flow_counts(&self, pair: Pair) -> anyhow::Result<(usize, usize)> {
        match pair {
            Pair::Gateway => {
                let count = |gateway: &GatewayProcess| -> anyhow::Result<usize> {
                    let status: serde_json::Value =
                        serde_json::from_str(&gateway.ask(&["status", "--json"])?)?;
                    // Two session entries (one per direction) per flow.
                    status["sessions"]
                        .as_u64()
                        .map(|sessions| sessions as usize / 2)
                        .with_context(|| format!("no sessions in {status}"))
                };
                Ok((count(&self.gateways[0])?, count(&self.gateways[1])?))
            }
            Pair::Conntrackd => {
                // The active's kernel table against the standby's external cache, both
                // counted as conntrack entries of the inside host.
                let active = self.lab.nodes[0]
                    .netns
                    .sh("conntrack -L -s 10.0.0.2 2>/dev/null | wc -l")?;
                let config = self.dir.join("gw2").join("conntrackd.conf");
                let standby = self.lab.nodes[1].netns.sh(&format!(
                    "conntrackd -C {} -e 2>/dev/null | grep -c 'src=10.0.0.2 ' || true",
                    config.display()
                ))?;
                Ok((active.trim().parse()?, standby.trim().parse()?))
            }
        }
    }

    /// Waits until the standby holds what the active holds (at least `least` each).
    fn wait_synced(&self, pair: Pair, least: usize, bound: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            let (active, standby) = self.flow_counts(pair)?;
            if active >= least && standby >= active {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(false)
    }

    /// Whether node 2 has taken over, by what costs the nodes nothing to check (a poll
    /// that asked the agent or dumped the kernel's table would itself slow the takeover):
    /// the gateway's agent logged its promotion (programs attached); Linux's notify script
    /// wrote its mark after `conntrackd -c` committed the external cache to the kernel.
    fn node2_active(&self, pair: Pair) -> bool {
        match pair {
            Pair::Gateway => self.gateways[1]
                .output()
                .contains("ha: promoted: fast path attached"),
            Pair::Conntrackd => self.dir.join("gw2").join("committed").exists(),
        }
    }

    /// Node 1 dies as a machine does: links cut, its daemons killed.
    fn kill_active(&mut self) -> anyhow::Result<()> {
        self.lab.cut_links(&self.lab.nodes[0])?;
        if let Some(gateway) = self.gateways.first_mut() {
            gateway.kill_hard()?;
        }
        if let Some(conntrackd) = self.conntrackd.first_mut() {
            conntrackd.kill_hard();
        }
        if let Some(keepalived) = self.keepalived.first_mut() {
            keepalived.kill_hard();
        }
        Ok(())
    }
}

/// TCP Gbit/s through node 1 with no standby: the gateway's peer absent, Linux without
/// conntrackd.
fn measure_without_sync(pair: Pair, gateway: &Path, seconds: u32) -> anyhow::Result<f64> {
    let lab = PairLab::up(pair, gateway, false)?;
    short_udp_flows_to_echo(&lab, TABLE_FLOWS)?;
    iperf_gbps(&lab.lab, seconds)
}

/// On a synced pair: (TCP Gbit/s through the active, new flows/s the standby took in,
/// the failover gap in seconds).
fn measure_pair(pair: Pair, gateway: &Path, seconds: u32) -> anyhow::Result<PairFigures> {
    let mut lab = PairLab::up(pair, gateway, true)?;
    let mut servers = EchoServers::start(&lab.lab.wan, ECHO_TCP, ECHO_UDP)?;
    // The cost: the same table as without the sync, the standby in step first.
    short_udp_flows(&lab.lab.lan, ECHO_UDP, TABLE_FLOWS)?;
    lab.wait_synced(pair, TABLE_FLOWS, BOUND)?;
    let gbps = iperf_gbps(&lab.lab, seconds)?;

    // The throughput: a burst of new flows, timed until the standby holds them all.
    let (before, _) = lab.flow_counts(pair)?;
    let mut burst_servers = EchoServers::start(&lab.lab.wan, BURST_TCP, BURST_UDP)?;
    let started = Instant::now();
    short_udp_flows(&lab.lab.lan, BURST_UDP, BURST_FLOWS)?;
    let rate = lab
        .wait_synced(pair, before + BURST_FLOWS, BOUND)?
        .then(|| BURST_FLOWS as f64 / started.elapsed().as_secs_f64());
    burst_servers.stop()?;

    // The gap: a paced transfer, the active killed in its middle.
    let stream = Stream::start(&lab.lab)?;
    std::thread::sleep(Duration::from_secs(2));
    lab.wait_synced(pair, 1, BOUND)?;
    // Killed right after one of its VRRP adverts, so that keepalived's master-down timer
    // (3 adverts and the skew) runs the same in every run and setup, and with it which of
    // TCP's retransmissions finds the new master.
    wait_for_advert(&lab.lab.nodes[1].netns)?;
    let died = Instant::now();
    lab.kill_active()?;
    let deadline = died + BOUND;
    while !lab.node2_active(pair) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took_over = died.elapsed().as_secs_f64();
    let takeover = lab.node2_active(pair).then_some(took_over);
    let resumed = stream.wait_after(died, Duration::from_secs(2), BOUND);
    println!(
        "bench:   node 2 active {took_over:.2} s after the kill; the transfer's first read after it at {}",
        stream
            .times()
            .iter()
            .find(|time| **time > died + Duration::from_secs_f64(took_over))
            .map_or("-".into(), |time| format!(
                "{:.2} s",
                (*time - died).as_secs_f64()
            ))
    );
    let gap = resumed.then(|| stream.longest_gap_since(died).as_secs_f64());
    stream.stop();
    servers.stop()?;
    Ok(PairFigures {
        gbps,
        rate,
        gap,
        takeover,
    })
}

/// What one synced pair measured.
struct PairFigures {
    gbps: f64,
    rate: Option<f64>,
    gap: Option<f64>,
    takeover: Option<f64>,
}

/// Waits in `netns` (the standby's) for the next VRRP advert (IP protocol 112) to arrive.
fn wait_for_advert(netns: &gateway_tests::netns::Netns) -> anyhow::Result<()> {
    netns
        .spawn(|| {
            // SAFETY: plain socket calls on a descriptor this closure owns and closes.
            unsafe {
                let socket = libc::socket(libc::AF_INET, libc::SOCK_RAW, 112);
                if socket < 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
                let timeout = libc::timeval {
                    tv_sec: 5,
                    tv_usec: 0,
                };
                libc::setsockopt(
                    socket,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
                let mut buffer = [0u8; 256];
                let read = libc::recv(socket, buffer.as_mut_ptr().cast(), buffer.len(), 0);
                libc::close(socket);
                if read < 0 {
                    bail!(
                        "no VRRP advert within 5 s: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("advert watcher panicked"))?
}

fn short_udp_flows_to_echo(lab: &PairLab, count: usize) -> anyhow::Result<()> {
    let mut servers = EchoServers::start(&lab.lab.wan, ECHO_TCP, ECHO_UDP)?;
    short_udp_flows(&lab.lab.lan, ECHO_UDP, count)?;
    servers.stop()
}

/// One iperf3 TCP stream from the inside host to the outside host for `seconds`: Gbit/s
/// received.
fn iperf_gbps(lab: &HaLab, seconds: u32) -> anyhow::Result<f64> {
    let mut server = Daemon(Some(
        lab.wan
            .command("iperf3")
            .args(["-s", "-1", "-p", &IPERF_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 -s")?,
    ));
    std::thread::sleep(Duration::from_millis(300));
    let output = lab
        .lan
        .command("iperf3")
        .args(["-c", &WAN_HOST.to_string(), "-p", &IPERF_PORT.to_string()])
        .args(["-t", &seconds.to_string(), "-J"])
        .output()
        .context("run iperf3 -c")?;
    server.kill_hard();
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("iperf3 -J output")?;
    if let Some(error) = json.get("error") {
        bail!("iperf3: {error}");
    }
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bits| bits / 1e9)
        .context("no end.sum_received.bits_per_second in iperf3's output")
}

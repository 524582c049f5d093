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
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gateway_tests::{
    TempFile,
    gateway::GatewayProcess,
    ha_flows::{EchoServers, short_udp_flows},
    ha_lab::{HaLab, Keepalived, Node, WAN_HOST, notify_script, sync_address},
    netns::unique_prefix,
};

use super::{Options, median, spread};

const ECHO_TCP: u16 = 7030;
const ECHO_UDP: u16 = 7031;
/// The burst's own echo servers: its flows are new 5-tuples even where a port of the
/// table's flows comes round again.
const BURST_TCP: u16 = 7040;
const BURST_UDP: u16 = 7041;
const STREAM_PORT: u16 = 7032;
const IPERF_PORT: u16 = 7033;
const CONNTRACKD_PORT: u16 = 3780;
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

/// A Linux router: forwarding on, the inside network SNATed to the public virtual address.
fn linux_router(node: &Node) -> anyhow::Result<()> {
    node.netns.sh("sysctl -qw net.ipv4.ip_forward=1
         nft -f - <<'EOF'
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"veth-out\" ip saddr 10.0.0.0/24 snat to 203.0.113.1
    }
}
EOF")?;
    Ok(())
}

fn start_conntrackd(lab: &HaLab, node: &Node, dir: &Path) -> anyhow::Result<Daemon> {
    use std::os::unix::process::CommandExt as _;
    std::fs::create_dir_all(dir)?;
    let peer = lab
        .nodes
        .iter()
        .find(|other| other.id != node.id)
        .context("no peer")?;
    let config = dir.join("conntrackd.conf");
    let socket = dir.join("conntrackd.ctl");
    std::fs::write(
        &config,
        format!(
            "Sync {{
    Mode FTFW {{
        DisableExternalCache Off
    }}
    UDP {{
        IPv4_address {own}
        IPv4_Destination_Address {peer}
        Port {CONNTRACKD_PORT}
        Interface veth-sync
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }}
    Options {{
        TCPWindowTracking Off
    }}
}}
General {{
    HashSize 32768
    HashLimit 131072
    LogFile {log}
    Syslog off
    LockFile {lock}
    UNIX {{
        Path {socket}
    }}
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 8388608
    Filter From Userspace {{
        Protocol Accept {{
            TCP
            UDP
        }}
        Address Ignore {{
            IPv4_address 127.0.0.1
            IPv4_address {own}
            IPv4_address {inside}
            IPv4_address {outside}
        }}
    }}
}}
",
            own = sync_address(node),
            peer = sync_address(peer),
            inside = node.inside,
            outside = node.outside,
            log = dir.join("conntrackd.log").display(),
            lock = dir.join("conntrackd.lock").display(),
            socket = socket.display(),
        ),
    )?;
    let child = node
        .netns
        .command("conntrackd")
        .arg("-C")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("start conntrackd (cargo xtask setup installs it for the bench)")?;
    let daemon = Daemon(Some(child));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!(
                "conntrackd did not open {}; its log:\n{}",
                socket.display(),
                std::fs::read_to_string(dir.join("conntrackd.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(daemon)
}

/// keepalived's notify script for a Linux node: conntrackd's `primary-backup.sh` actions
/// (none without conntrackd).
fn conntrackd_notify(dir: &Path, conntrackd: bool) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("notify");
    let command = format!("conntrackd -C {}", dir.join("conntrackd.conf").display());
    // When the commit is done: the bench's takeover time.
    let mark = dir.join("committed").display().to_string();
    let actions = if conntrackd {
        format!(
            "case \"$state\" in
    MASTER) {command} -c; touch {mark}; {command} -f; {command} -R; {command} -B ;;
    BACKUP) {command} -t; {command} -n ;;
    *) {command} -t ;;
esac"
        )
    } else {
        ":".to_owned()
    };
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n# keepalived appends: GROUP NAME STATE PRIORITY\neval \"state=\\${{$(($# - 1))}}\"\n{actions}\n"
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
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

/// A paced TCP transfer from the inside host to the outside host (8 KiB every 5 ms); the
/// receiver records when each read returned.
struct Stream {
    stop: Arc<AtomicBool>,
    reads: Arc<Mutex<Vec<Instant>>>,
    threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Stream {
    fn start(lab: &HaLab) -> anyhow::Result<Stream> {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(Mutex::new(Vec::new()));
        let (ready, listening) = std::sync::mpsc::channel();
        let (stopped, times) = (stop.clone(), reads.clone());
        let receiver = lab.wan.spawn(move || {
            let listener = TcpListener::bind(SocketAddrV4::new(WAN_HOST, STREAM_PORT))?;
            let _ = ready.send(());
            let (mut stream, _) = listener.accept()?;
            stream.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut buffer = vec![0; 65536];
            while !stopped.load(Ordering::Relaxed) {
                match stream.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(_) => times
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Instant::now()),
                    Err(err)
                        if matches!(
                            err.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            Ok(())
        });
        listening
            .recv_timeout(Duration::from_secs(5))
            .context("stream receiver not listening")?;
        let stopped = stop.clone();
        let sender = lab.lan.spawn(move || {
            let mut stream = TcpStream::connect_timeout(
                &SocketAddrV4::new(WAN_HOST, STREAM_PORT).into(),
                Duration::from_secs(5),
            )?;
            stream.set_write_timeout(Some(Duration::from_millis(500)))?;
            let chunk = vec![0x5a; 8192];
            while !stopped.load(Ordering::Relaxed) {
                match stream.write_all(&chunk) {
                    Ok(()) => {}
                    Err(err)
                        if matches!(
                            err.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(err) => return Err(err.into()),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        });
        Ok(Stream {
            stop,
            reads,
            threads: vec![receiver, sender],
        })
    }

    fn times(&self) -> Vec<Instant> {
        self.reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until data has arrived for `flowing` after `since` (the transfer resumed).
    fn wait_after(&self, since: Instant, flowing: Duration, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            let times = self.times();
            if let (Some(first), Some(last)) = (
                times
                    .iter()
                    .find(|time| **time > since + Duration::from_millis(1)),
                times.last(),
            ) && *last > since
                && *last - *first >= flowing
            {
                // The first read after `since` may still be data sent before it: what
                // counts is that reads go on.
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The longest pause between two reads, from the last read before `since` on.
    fn longest_gap_since(&self, since: Instant) -> Duration {
        let times = self.times();
        let first = times
            .iter()
            .rposition(|time| *time <= since)
            .unwrap_or_default();
        times[first..]
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default()
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The receiver may wait in accept if the sender never connected: it is a detached
        // thread of a namespace about to be removed; the sender ends at its next write.
        for thread in self.threads.drain(..) {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

fn report(samples: &[HaSamples], options: &Options) -> String {
    let mut text = String::new();
    let _ = write!(
        text,
        "\n## High availability\n\nThe HA lab of the tests (inside and outside segments as bridges, two router namespaces on both,\na sync link between them, keepalived in each with unicast VRRP, `advert_int 1`, as the packaged example), a\npair of its own per figure, {runs} runs alternating; median and range. Gateway pair: the agents with the\nstate sync. Linux: nftables SNAT of the inside network to the public virtual address, `nf_nat_ftp` loaded,\nconntrackd (FTFW over UDP on the sync link, external cache, TCP window tracking off) run by keepalived with\nthe actions of conntrackd's own `primary-backup.sh`. Written by `cargo xtask bench`, or alone (this section\nonly) by `cargo xtask bench --ha-only`.\n\n\
- Failover gap: a TCP transfer from the inside host through the masquerade (8 KiB every 5 ms), the active\n  node's links cut and its daemons killed (`kill -9`); the longest pause between the receiver's reads. Most of\n  it is keepalived's master-down timer (about 3.6 s), then TCP's backed-off retransmission. On the Linux\n  side this connection would also go on without conntrackd (the kernel picks an established TCP connection\n  up mid-stream, `nf_conntrack_tcp_loose`, and SNAT keeps its source port while that is free), so that\n  row times keepalived and the commit of conntrackd's cache; the throughput row is what conntrackd's\n  sync itself does. TCP retransmits about 3.0 s and 6.2 s after the loss began: a takeover just before the
  first makes a gap of about 3.1 s, just after it one of about 6.5 s. Where in keepalived's 1 s advert
  cycle the active dies decides which, so it is killed right after an advert reached the standby (its\n  master-down timer then runs 3.6 s in every run). The takeover column is the time from the kill until\n  node 2 carried the state in its data path (the gateway: the agent logged its promotion, programs\n  attached; Linux: the notify script's mark after `conntrackd -c` committed the cache to the kernel),\n  polled every 20 ms by what costs the nodes nothing.\n\
- Sync throughput: {burst} new UDP flows (a datagram each, echoed) created on the active as fast as one\n  sender does, with {table} flows in the table; flows per second from the first until the standby holds them\n  all (the gateway's `gateway status` session count, conntrackd's external cache). A figure bounded by the sender when\n  the standby keeps up.\n\
- Sync cost: one iperf3 TCP stream ({seconds} s) through the active with {table} short flows in the table,\n  with the standby syncing, and on a lab where no standby runs (the gateway's sync idle, Linux without\n  conntrackd). Both nodes share this machine's cores with iperf3, so the standby's work (applying) counts\n  here as much as the active's (the gateway's 200 ms walks of its maps; conntrackd's event handling).\n\n",
        runs = options.runs,
        burst = BURST_FLOWS,
        table = TABLE_FLOWS,
        seconds = options.seconds,
    );
    text.push_str("| setup | failover gap s (range) | vs Linux | takeover s (range) | vs Linux | synced new flows/s (range) | vs Linux | TCP Gbit/s with sync / without (ranges) | sync's cost |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let linux = samples.get(1);
    let figure = |values: &[Option<f64>]| -> Option<(f64, f64, f64, usize)> {
        let done: Vec<f64> = values.iter().flatten().copied().collect();
        if done.is_empty() {
            return None;
        }
        let (low, high) = spread(&done);
        Some((median(&done), low, high, values.len() - done.len()))
    };
    for (pair, sample) in Pair::ALL.iter().zip(samples) {
        let gap = figure(&sample.gap);
        let takeover = figure(&sample.takeover);
        let linux_takeover = linux.and_then(|linux| figure(&linux.takeover));
        let rate = figure(&sample.sync_rate);
        let linux_gap = linux.and_then(|linux| figure(&linux.gap));
        let linux_rate = linux.and_then(|linux| figure(&linux.sync_rate));
        let cell = |value: Option<(f64, f64, f64, usize)>, digits: usize, failed: &str| {
            value.map_or(
                format!("none: {failed} in every run"),
                |(m, lo, hi, missed)| {
                    let mut cell = format!("{m:.digits$} ({lo:.digits$}-{hi:.digits$})");
                    if missed > 0 {
                        let _ = write!(cell, ", {missed} run(s) {failed}");
                    }
                    cell
                },
            )
        };
        let ratio = |ours: Option<(f64, f64, f64, usize)>,
                     theirs: Option<(f64, f64, f64, usize)>| {
            match (ours, theirs) {
                (Some(ours), Some(theirs)) if theirs.0 > 0.0 => {
                    let overlap = ours.1 <= theirs.2 && theirs.1 <= ours.2;
                    format!(
                        "{:.2}x{}",
                        ours.0 / theirs.0,
                        if overlap && *pair != Pair::Conntrackd {
                            " (ranges overlap)"
                        } else {
                            ""
                        }
                    )
                }
                _ => "-".into(),
            }
        };
        let (with, without) = (median(&sample.with_sync), median(&sample.without_sync));
        let (with_low, with_high) = spread(&sample.with_sync);
        let (without_low, without_high) = spread(&sample.without_sync);
        let cost_overlap = with_low <= without_high && without_low <= with_high;
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} | {with:.2} / {without:.2} ({with_low:.2}-{with_high:.2} / {without_low:.2}-{without_high:.2}) | {:.2}x{} |",
            pair.name(),
            cell(gap, 2, "never resumed"),
            ratio(gap, linux_gap),
            cell(takeover, 2, "no takeover within 30 s"),
            ratio(takeover, linux_takeover),
            cell(rate, 0, "standby did not catch up within 30 s"),
            ratio(rate, linux_rate),
            if without > 0.0 { with / without } else { 0.0 },
            if cost_overlap {
                " (within noise: the ranges overlap)"
            } else {
                ""
            },
        );
    }
    text.push_str("\nA gap or takeover ratio below 1 and a throughput ratio above 1 favour the gateway. The sync's cost is the\nthroughput with the sync over the throughput without (1.00x: no cost this machine can see).\n");
    text
}

/// Puts `section` (which starts with its `## High availability` heading) into the report
/// `text` in place of the previous one; without one, before the concurrency section (where
/// the full bench writes it), else at the end.
pub(super) fn splice_section(text: &str, section: &str) -> String {
    const HEADING: &str = "\n## High availability\n";
    let section = section.trim_end_matches('\n');
    let (before, after) = match text.find(HEADING) {
        Some(start) => {
            let rest = &text[start + HEADING.len()..];
            let end = rest
                .find("\n## ")
                .or_else(|| rest.find("\nThis run of `cargo xtask bench`"))
                .map_or(text.len(), |end| start + HEADING.len() + end);
            (&text[..start], &text[end..])
        }
        None => match text.find("\n## Concurrency\n") {
            Some(start) => (&text[..start], &text[start..]),
            None => (text.trim_end_matches('\n'), "\n"),
        },
    };
    format!("{before}{section}\n{after}")
}

#[cfg(test)]
mod tests {
    use super::splice_section;

    const SECTION: &str = "\n## High availability\n\nnew rows\n";

    #[test]
    fn the_section_replaces_the_previous_one_and_nothing_else() {
        let text = "# Benchmarks\n\n## FTP\n\nftp rows\n\n## High availability\n\nold rows\n\n## Concurrency\n\nsoak\n";
        assert_eq!(
            splice_section(text, SECTION),
            "# Benchmarks\n\n## FTP\n\nftp rows\n\n## High availability\n\nnew rows\n\n## Concurrency\n\nsoak\n"
        );
        // Again: the same file.
        let once = splice_section(text, SECTION);
        assert_eq!(splice_section(&once, SECTION), once);
    }

    #[test]
    fn without_one_it_goes_before_the_concurrency_section_or_at_the_end() {
        assert_eq!(
            splice_section("# B\n\n## FTP\n\nrows\n\n## Concurrency\n\nsoak\n", SECTION),
            "# B\n\n## FTP\n\nrows\n\n## High availability\n\nnew rows\n\n## Concurrency\n\nsoak\n"
        );
        assert_eq!(
            splice_section("# B\n\nrows\n", SECTION),
            "# B\n\nrows\n## High availability\n\nnew rows\n\n"
        );
    }

    #[test]
    fn the_closing_line_of_the_full_bench_stays() {
        let text = "# B\n\n## High availability\n\nold\n\nThis run of `cargo xtask bench` took 11.0 minutes.\n";
        assert_eq!(
            splice_section(text, SECTION),
            "# B\n\n## High availability\n\nnew rows\n\nThis run of `cargo xtask bench` took 11.0 minutes.\n"
        );
    }
}

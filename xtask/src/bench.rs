//! `cargo xtask bench`: the fast path measured beside Linux, in one run, written to
//! BENCHMARKS.md. Never part of the tests.
//!
//! 1. Per-packet cost inside the programs, from BPF_PROG_TEST_RUN (`tests/benches/fastpath.rs`).
//! 2. Across the lab, alternating configurations run by run: plain forwarding (no NAT), Linux
//!    nftables NAT, and the gateway on each hook, all publishing the same server:
//!    - TCP bulk throughput, one iperf3 stream;
//!    - small UDP packets (64-byte payloads, unlimited rate), packets per second received. On
//!      veth the sender, not the router, limits this rate, so what counts is the time each NAT
//!      adds per packet over plain forwarding: 1/pps(NAT) - 1/pps(plain).
//!
//!    Native XDP needs wire-like end hosts (no checksum offload, so no TSO): its rows are
//!    measured against plain forwarding and nftables between such hosts too.
//! 3. FTP through the ALG beside Linux nftables NAT with the `ftp` conntrack helper assigned
//!    explicitly (nf_nat_ftp), and plain forwarding: complete sessions per second (login,
//!    PASV, LIST, QUIT) and the PASV round trip, whose excess over plain forwarding is the
//!    latency each gateway adds to a 227 reply.

use std::{
    fmt::Write as _,
    net::SocketAddrV4,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use gateway_tests::{TempFile, gateway::GatewayProcess, lab::Lab};

mod cpu;
mod ftp;
mod ha;
mod lab_runs;
mod router_cpu;

const PORT: u16 = 5201;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    Plain,
    Nftables,
    GatewayTc,
    /// Plain forwarding between wire-like end hosts: the baseline of the XDP rows.
    PlainWireLike,
    /// nftables between the same wire-like end hosts: what the XDP rows are compared with.
    NftablesWireLike,
    GatewayXdp,
    /// The same hooks with `forwarding = "kernel"`: translated packets routed by the stack,
    /// for the "BPF forwarding or the stack's, whichever is faster per hook" comparison.
    GatewayTcKernel,
    GatewayXdpKernel,
}

impl Setup {
    const ALL: [Setup; 8] = [
        Setup::Plain,
        Setup::Nftables,
        Setup::GatewayTc,
        Setup::PlainWireLike,
        Setup::NftablesWireLike,
        Setup::GatewayXdp,
        Setup::GatewayTcKernel,
        Setup::GatewayXdpKernel,
    ];

    /// Configurations between wire-like end hosts (checksum offload off). Their end hosts
    /// also carry an XDP_PASS program, so that the veths take the frames the gateway's XDP
    /// redirects to them (a veth drops them otherwise); the plain baseline gets the same.
    fn wire_like(self) -> bool {
        matches!(
            self,
            Setup::PlainWireLike
                | Setup::NftablesWireLike
                | Setup::GatewayXdp
                | Setup::GatewayXdpKernel
        )
    }

    /// The plain-forwarding run this one's added per-packet cost is measured against.
    fn baseline(self) -> Setup {
        if self.wire_like() {
            Setup::PlainWireLike
        } else {
            Setup::Plain
        }
    }

    /// The nftables run this one is compared with: measured between the same kind of end
    /// hosts, so that a ratio compares two NATs and not two kinds of traffic.
    fn nftables(self) -> Setup {
        if self.wire_like() {
            Setup::NftablesWireLike
        } else {
            Setup::Nftables
        }
    }

    fn name(self) -> &'static str {
        match self {
            Setup::Plain => "plain forwarding (no NAT)",
            Setup::PlainWireLike => "plain forwarding, wire-like hosts",
            Setup::Nftables => "Linux nftables DNAT",
            Setup::NftablesWireLike => "Linux nftables DNAT, wire-like hosts",
            Setup::GatewayTc => "gateway, TC (tcx), BPF forwarding (redirect_neigh)",
            Setup::GatewayXdp => "gateway, native XDP, BPF forwarding (devmap redirect)",
            Setup::GatewayTcKernel => "gateway, TC (tcx), forwarding = kernel",
            Setup::GatewayXdpKernel => "gateway, native XDP, forwarding = kernel (XDP_PASS)",
        }
    }
}

#[derive(Default, Clone)]
struct Samples {
    tcp_gbps: Vec<f64>,
    udp_pps: Vec<f64>,
    /// The machine's softirq time per UDP packet sent, ns (see `cpu`).
    softirq_ns: Vec<f64>,
}

#[derive(Clone, Copy)]
pub struct Options {
    pub seconds: u32,
    pub runs: usize,
    /// Only the FTP rows, printed rather than written (for work on the ALG).
    pub ftp_only: bool,
    /// Only the high-availability rows, printed rather than written.
    pub ha_only: bool,
    /// Only the lab's fast-path rows (throughput and router CPU per packet), printed rather
    /// than written.
    pub fastpath_only: bool,
    /// `[ftp] busy_poll_us` for the gateway's FTP runs; the default configuration's without.
    pub busy_poll_us: Option<u64>,
    /// For the FTP runs, every setup alike: idle CPUs held to this wake-up latency (a PM
    /// QoS request the bench holds); the host's idle states as they are without.
    pub cpu_wakeup_latency_us: Option<u32>,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    crate::require_root("cargo xtask bench")?;
    ctrlc::set_handler(|| {
        let removed = gateway_tests::netns::remove_namespaces_of(std::process::id());
        eprintln!("\ninterrupted: removed {} namespace(s)", removed.len());
        std::process::exit(130);
    })
    .context("cannot install the Ctrl-C handler")?;
    crate::setup::run_for_bench()?;
    let gateway = crate::build_gateway(true)?;
    if options.ha_only {
        let section = ha::run(&gateway, options)?;
        print!("{section}");
        // Its own section only: the other figures stay those of the last full run.
        let path = crate::workspace_root().join("BENCHMARKS.md");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, ha::splice_section(&text, &section))
            .context("write BENCHMARKS.md")?;
        println!(
            "bench: --ha-only: its section of {} rewritten, the rest left as it is",
            path.display()
        );
        return Ok(());
    }
    if options.ftp_only {
        print!("{}", ftp::run(&gateway, options)?);
        println!("bench: --ftp-only: BENCHMARKS.md left as it is");
        return Ok(());
    }
    if options.fastpath_only {
        let samples = lab_runs::lab_samples(&gateway, options)?;
        print!("{}", router_cpu::report(&samples, options)?);
        println!("bench: --fastpath-only: BENCHMARKS.md left as it is");
        return Ok(());
    }

    println!("bench: BPF_PROG_TEST_RUN per-packet cost");
    let output = crate::cargo()
        .args([
            "bench",
            "--quiet",
            "--package",
            "gateway-tests",
            "--bench",
            "fastpath",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo bench")?;
    if !output.status.success() {
        bail!("the fastpath micro-benchmark failed ({})", output.status);
    }
    let testrun: Vec<(String, String, u64)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("fastpath")).then_some(())?;
            Some((
                words.next()?.to_owned(),
                words.next()?.to_owned(),
                words.next()?.parse().ok()?,
            ))
        })
        .collect();

    let samples = lab_runs::lab_samples(&gateway, options)?;
    let mut ftp_report = ftp::run(&gateway, options)?;
    if options.cpu_wakeup_latency_us.is_none() {
        // Again with idle CPUs kept from halting, every setup alike: what the wake-ups of
        // the agent cost on this machine, and what `[ftp] cpu_wakeup_latency_us = 0` buys.
        let awake = Options {
            cpu_wakeup_latency_us: Some(0),
            ..*options
        };
        ftp_report.push_str(&ftp::run(&gateway, &awake)?);
    }
    let ha_report = ha::run(&gateway, options)?;
    println!("bench: concurrency (the soak)");
    let soak = crate::soak::soak(&gateway, 10_000, 1_000, 60)?;
    let mut report = report(&testrun, &samples, options)?;
    report.push_str(&router_cpu::report(&samples, options)?);
    report.push_str(&ftp_report);
    report.push_str(&ha_report);
    report.push_str(&format!(
                "\n## Concurrency\n\nFrom `cargo xtask soak` (run here with 60 s of downloads): {} of {} control sessions opened through the\nALG in {:.1} s and held open, {} passive downloads at a time through them: {} downloads, {} failed\n(sessions and downloads; the target is 0); the agent's memory grew by about {} bytes per control session; {}\nentries (control sessions, session-table entries, expectations) were left once the sessions ended.\n{}\n",
                soak.opened,
        soak.sessions,
        soak.open_seconds,
        soak.transfers_at_once,
        soak.transfers,
        soak.failed,
        soak.bytes_per_session,
        soak.left,
        if soak.failures.is_empty() {
            "All its checks passed.".to_owned()
        } else {
            format!("Its checks failed: {}.", soak.failures.join("; "))
        }
    ));
    report.push_str(&format!(
        "\nThis run of `cargo xtask bench` took {:.1} minutes, set-up check and release build included.\n",
        started.elapsed().as_secs_f64() / 60.0
    ));
    let path = crate::workspace_root().join("BENCHMARKS.md");
    std::fs::write(&path, report).context("write BENCHMARKS.md")?;
    println!("bench: wrote {}", path.display());
    Ok(())
}

/// The gateway on the lab's router with config `text` (kept in a file as long as it runs).
fn start_gateway(
    binary: &std::path::Path,
    lab: &Lab,
    prefix: &str,
    text: &str,
) -> anyhow::Result<(GatewayProcess, TempFile)> {
    let config = TempFile::write(&format!("{prefix}-gateway.toml"), text);
    let gateway = GatewayProcess::start_binary(binary, &lab.router, &config.0, &[])?;
    Ok((gateway, config))
}

struct IperfServer(Child);

impl IperfServer {
    fn start(lab: &Lab) -> anyhow::Result<IperfServer> {
        let child = lab
            .inside
            .command("iperf3")
            .args(["-s", "-p", &PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 -s")?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(IperfServer(child))
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn iperf(
    lab: &Lab,
    target: SocketAddrV4,
    seconds: u32,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let output = lab
        .outside
        .command("iperf3")
        .args([
            "-c",
            &target.ip().to_string(),
            "-p",
            &target.port().to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ])
        .args(extra)
        .output()
        .context("run iperf3 -c")?;
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("iperf3 -J output")?;
    if let Some(error) = json.get("error") {
        bail!("iperf3: {error}");
    }
    Ok(json)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn spread(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix("model name")
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}, Linux {kernel}, {}", idle_states())
}

/// How the CPUs idle, which decides what waking a sleeping process costs (in a virtual
/// machine a halted virtual CPU is woken through the hypervisor).
fn idle_states() -> String {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .ok()
    };
    let Some(driver) = read("/sys/devices/system/cpu/cpuidle/current_driver") else {
        return "no cpuidle driver".to_owned();
    };
    let governor = read("/sys/devices/system/cpu/cpuidle/current_governor").unwrap_or_default();
    let halt_poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
        .map(|ns| format!(", guest halt-polling {ns} ns"))
        .unwrap_or_default();
    format!("cpuidle {driver} ({governor} governor{halt_poll})")
}

/// A PM QoS request on the CPUs' wake-up latency, held while the value lives (the kernel
/// withdraws it when the file closes). What `gateway_user::system::CpuLatencyRequest` does:
/// xtask does not link the agent's library (it builds before the BPF toolchain exists).
pub(crate) struct CpuLatencyHold {
    _request: std::fs::File,
}

impl CpuLatencyHold {
    pub(crate) fn new(us: u32) -> anyhow::Result<CpuLatencyHold> {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .context("open /dev/cpu_dma_latency")?;
        let value = i32::try_from(us).context("a wake-up latency beyond i32")?;
        file.write_all(&value.to_ne_bytes())
            .context("write /dev/cpu_dma_latency")?;
        Ok(CpuLatencyHold { _request: file })
    }
}

fn report(
    testrun: &[(String, String, u64)],
    samples: &[Samples],
    options: &Options,
) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "# Benchmarks\n")?;
    writeln!(
        out,
        "Written by `cargo xtask bench` (which prints the same figures as it runs). Machine: {}.\n",
        machine()
    )?;
    writeln!(
        out,
        "## Per-packet cost inside the programs (BPF_PROG_TEST_RUN)\n"
    )?;
    writeln!(
        out,
        "Median of single runs timed by the kernel, each on a fresh copy of the frame (with `repeat`, later runs\nwould see the already translated frame and time a miss). Includes the test-run timer's own overhead, so read\nthe rows against each other. These rows have no Linux column: netfilter cannot be run on one crafted frame;\nthe cost it adds per packet is measured across the lab below, beside ours. Every timed run's verdict and output\nframe were checked against its row (a translation that missed, or a punt passed on, stops the bench). TestRun\nreports the tap redirect without carrying it out: that row is the program's side.\n"
    )?;
    writeln!(out, "| case | XDP ns | TC ns |\n| --- | --- | --- |")?;
    for (case, what) in [
        ("published", "published server, DNAT (stateless)"),
        ("session_hit", "masqueraded connection, established session"),
        (
            "new_flow",
            "new masqueraded connection (mapping + 2 sessions)",
        ),
        (
            "miss",
            "no match (every table consulted, passed to the kernel)",
        ),
        (
            "punt",
            "FTP control packet punted to the agent's ring buffer (`punt = \"ring\"`, and the fallback)",
        ),
        (
            "punt_tap",
            "FTP control packet punted to the agent's tap (the default)",
        ),
        (
            "scale_1000",
            "established session, 1,000 other entries in the table",
        ),
        ("scale_100000", "established session, 100,000 other entries"),
        (
            "scale_1000000",
            "established session, 1,000,000 other entries",
        ),
    ] {
        let get = |hook: &str| {
            testrun
                .iter()
                .find(|(h, c, _)| h == hook && c == case)
                .map(|(_, _, ns)| ns.to_string())
                .unwrap_or("-".into())
        };
        writeln!(out, "| {what} | {} | {} |", get("xdp"), get("tc"))?;
    }
    let ns_of = |hook: &str, case: &str| {
        testrun
            .iter()
            .find(|(h, c, _)| h == hook && c == case)
            .map(|(_, _, ns)| *ns as f64)
    };
    for (hook, name) in [("xdp", "XDP"), ("tc", "TC")] {
        if let (Some(ring), Some(tap)) = (ns_of(hook, "punt"), ns_of(hook, "punt_tap")) {
            writeln!(
                out,
                "\n{name}: a punt to the ring cost {:.1}x a punt to the tap in this run.",
                ring / tap
            )?;
        }
    }
    let memory = |case: &str| {
        testrun
            .iter()
            .find(|(hook, c, _)| hook == "memory" && c == case)
            .map(|(_, _, value)| *value)
    };
    if let (Some(bytes), Some(capacity)) = (memory("maps_bytes"), memory("capacity")) {
        writeln!(
            out,
            "\nMap memory (the kernel's memlock accounting of every map, preallocated) with a session table of\n{capacity} entries: {:.0} MiB.",
            bytes as f64 / (1024.0 * 1024.0)
        )?;
    }
    writeln!(out, "\n## Across the lab\n")?;
    writeln!(
        out,
        "The reference lab (client, router, server namespaces joined by veth pairs), rebuilt for every measurement;\nthe configurations alternate, {} runs of {} s each per figure; median and range. All NAT setups publish the same\nserver at 203.0.113.1:{PORT} (plain forwarding routes to it directly instead). TCP: one iperf3 stream.\nUDP: iperf3 `-u -b 0 -l 64`, packets received per second. The native-XDP runs use end hosts with checksum\noffload off (wire-like packets; XDP cannot update partial checksums), which also means no TSO: that, not the\nprogram, is why its TCP figure is low on veth, and why `auto` picks TC there. Its added per-packet cost is\nmeasured against plain forwarding between the same wire-like hosts, and both its columns \"vs nftables\" against\nnftables between those hosts too. Those end hosts carry an XDP_PASS program: a veth only takes frames redirected\nto it by XDP when its peer runs XDP (or GRO).\n",
        options.runs, options.seconds
    )?;
    let pps_of = |setup: Setup| {
        let index = Setup::ALL.iter().position(|s| *s == setup).unwrap_or(0);
        median(&samples[index].udp_pps)
    };
    let tcp_of = |setup: Setup| {
        let index = Setup::ALL.iter().position(|s| *s == setup).unwrap_or(0);
        median(&samples[index].tcp_gbps)
    };
    let added_of = |setup: Setup| 1e9 / pps_of(setup) - 1e9 / pps_of(setup.baseline());
    writeln!(
        out,
        "| setup | TCP Gbit/s (range) | vs nftables | UDP 64 B packets/s (range) | added ns/packet over plain | vs nftables |\n| --- | --- | --- | --- | --- | --- |"
    )?;
    for (setup, sample) in Setup::ALL.iter().zip(samples) {
        let tcp = median(&sample.tcp_gbps);
        let (tcp_min, tcp_max) = spread(&sample.tcp_gbps);
        let pps = median(&sample.udp_pps);
        let (pps_min, pps_max) = spread(&sample.udp_pps);
        let added = 1e9 / pps - 1e9 / pps_of(setup.baseline());
        // The baseline's own run-to-run spread, in the same unit: a difference smaller than
        // this is the sender's noise, not the router's cost.
        let baseline = Setup::ALL
            .iter()
            .position(|s| *s == setup.baseline())
            .unwrap_or(0);
        let (low, high) = spread(&samples[baseline].udp_pps);
        let noise = 1e9 / low - 1e9 / high;
        let (added_text, ratio_text) = if setup.baseline() == *setup {
            ("-".to_owned(), "-".to_owned())
        } else {
            let added_text = if added.abs() <= noise {
                format!("{added:.0} (within noise, +/-{noise:.0})")
            } else {
                format!("{added:.0}")
            };
            // nftables' cost beside the same baseline: a ratio to a cost within the noise
            // would be a ratio to noise.
            let nft_added = added_of(setup.nftables());
            let ratio_text = if nft_added.abs() <= noise {
                format!("- (nftables' own {nft_added:.0} is within noise)")
            } else {
                format!("{:.2}x", added / nft_added)
            };
            (added_text, ratio_text)
        };
        writeln!(
            out,
            "| {} | {tcp:.2} ({tcp_min:.2}-{tcp_max:.2}) | {:.2}x | {pps:.0} ({pps_min:.0}-{pps_max:.0}) | {added_text} | {ratio_text} |",
            setup.name(),
            tcp / tcp_of(setup.nftables()),
        )?;
    }
    // Which forwarding to keep per hook: the one with more TCP throughput, unless the other
    // adds less per packet by more than the noise.
    writeln!(out)?;
    for (hook, bpf, kernel) in [
        ("TC", Setup::GatewayTc, Setup::GatewayTcKernel),
        ("native XDP", Setup::GatewayXdp, Setup::GatewayXdpKernel),
    ] {
        let (bpf_tcp, kernel_tcp) = (tcp_of(bpf), tcp_of(kernel));
        let range = |setup: Setup| {
            let index = Setup::ALL.iter().position(|s| *s == setup).unwrap_or(0);
            spread(&samples[index].tcp_gbps)
        };
        let ((bpf_low, bpf_high), (kernel_low, kernel_high)) = (range(bpf), range(kernel));
        // Only a difference beyond the runs' spread is a reason to change the default.
        let within_noise = bpf_low <= kernel_high && kernel_low <= bpf_high;
        let noise = if within_noise {
            " (the TCP ranges overlap: the order is within noise)"
        } else {
            ""
        };
        let winner = if within_noise {
            "no difference this machine can measure: BPF forwarding stays the default"
        } else if bpf_tcp >= kernel_tcp {
            "BPF forwarding is faster: kept (the default)"
        } else {
            "the stack's forwarding is faster here: `forwarding = \"kernel\"` is the setting to use with this hook"
        };
        writeln!(
            out,
            "- {hook}: TCP {bpf_tcp:.2} Gbit/s with BPF forwarding, {kernel_tcp:.2} with the stack's{noise}; added per packet {:.0} ns and {:.0} ns: {winner}.",
            added_of(bpf),
            added_of(kernel),
        )?;
    }
    writeln!(
        out,
        "\nTargets (fast-path issue): TCP bulk >= nftables; added per-packet cost <= half of nftables' (a ratio of 0.50x or\nless in the last column). Forwarding per row: \"BPF forwarding\" (the default, `forwarding = \"bpf\"`) means the\nprogram forwards translated packets itself, past the router's stack: TC by FIB lookup and bpf_redirect_neigh,\nXDP by FIB lookup and XDP_REDIRECT through a devmap; \"forwarding = kernel\" rows hand every translated packet to\nthe stack, which routes it. The faster of each pair is the one to keep for that hook. On veth the UDP sender\nlimits the packet rate, so a NAT's added cost only shows when it exceeds the baseline's run-to-run spread\n(marked as within noise otherwise, and its ratio is then not a measurement); the per-packet costs inside the\nprograms are in the first table. Nothing in this file is edited by hand.",
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples of equal runs (no spread): `(setup, TCP Gbit/s, UDP packets/s)`.
    fn samples(figures: &[(Setup, f64, f64)]) -> Vec<Samples> {
        Setup::ALL
            .iter()
            .map(|setup| {
                let (_, tcp, pps) = figures
                    .iter()
                    .find(|(s, _, _)| s == setup)
                    .copied()
                    .unwrap_or((*setup, 1.0, 1.0));
                Samples {
                    tcp_gbps: vec![tcp; 3],
                    udp_pps: vec![pps; 3],
                    softirq_ns: vec![1e9 / pps; 3],
                }
            })
            .collect()
    }

    fn row(report: &str, setup: Setup) -> &str {
        report
            .lines()
            .find(|line| line.starts_with(&format!("| {} |", setup.name())))
            .unwrap_or_else(|| panic!("no row for {setup:?} in\n{report}"))
    }

    #[test]
    fn wire_like_rows_are_compared_with_nftables_between_wire_like_hosts() {
        // Per packet: plain 5000 ns, nftables 6250 (adds 1250); wire-like plain 10000 ns,
        // wire-like nftables 12500 (adds 2500), XDP 11250 (adds 1250: half of nftables'
        // beside the same hosts, as much as nftables' beside the others).
        let samples = samples(&[
            (Setup::Plain, 20.0, 200_000.0),
            (Setup::Nftables, 18.0, 160_000.0),
            (Setup::PlainWireLike, 4.4, 100_000.0),
            (Setup::NftablesWireLike, 4.0, 80_000.0),
            (Setup::GatewayXdp, 4.2, 1e9 / 11_250.0),
        ]);
        let testrun = [
            ("xdp".to_owned(), "punt".to_owned(), 6000),
            ("xdp".to_owned(), "punt_tap".to_owned(), 300),
        ];
        let options = Options {
            seconds: 1,
            runs: 3,
            ftp_only: false,
            ha_only: false,
            fastpath_only: false,
            busy_poll_us: None,
            cpu_wakeup_latency_us: None,
        };
        let report = report(&testrun, &samples, &options).expect("report");
        let xdp = row(&report, Setup::GatewayXdp);
        assert!(
            xdp.contains("| 1.05x |"),
            "TCP against wire-like nftables: {xdp}"
        );
        assert!(xdp.ends_with("| 1250 | 0.50x |"), "{xdp}");
        let nft = row(&report, Setup::NftablesWireLike);
        assert!(nft.ends_with("| 2500 | 1.00x |"), "{nft}");
        assert!(
            report.contains("XDP: a punt to the ring cost 20.0x a punt to the tap in this run."),
            "{report}"
        );
    }

    #[test]
    fn no_ratio_to_an_nftables_cost_within_the_noise() {
        let mut samples = samples(&[
            (Setup::PlainWireLike, 4.4, 100_000.0),
            (Setup::NftablesWireLike, 4.0, 99_000.0),
            (Setup::GatewayXdp, 4.2, 90_000.0),
        ]);
        let wire_like = Setup::ALL
            .iter()
            .position(|setup| *setup == Setup::PlainWireLike)
            .expect("wire-like baseline");
        // The baseline's runs spread over about 400 ns a packet.
        samples[wire_like].udp_pps = vec![98_000.0, 100_000.0, 102_000.0];
        let options = Options {
            seconds: 1,
            runs: 3,
            ftp_only: false,
            ha_only: false,
            fastpath_only: false,
            busy_poll_us: None,
            cpu_wakeup_latency_us: None,
        };
        let report = report(&[], &samples, &options).expect("report");
        let xdp = row(&report, Setup::GatewayXdp);
        assert!(xdp.contains("nftables' own 101 is within noise"), "{xdp}");
    }
}

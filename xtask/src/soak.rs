//! `cargo xtask soak`: load and soak, bounded in time. In a lab of its own: a published
//! pyftpdlib behind the gateway, thousands of FTP control sessions held open at once and
//! hundreds of passive downloads running through them for a while; then everything closed.
//! Passes when no session and no transfer failed, the agent's memory stayed flat once the
//! sessions were open, and nothing was left in the maps after the sessions ended.

use std::{net::SocketAddrV4, time::Duration};

use anyhow::{Context as _, bail};
use gateway_tests::{
    TempFile,
    ftp::{Script, sha256, wait_listening},
    gateway::GatewayProcess,
    lab::{self, Lab, LabOptions},
    netns::unique_prefix,
    transfer::{hex, pattern},
};

/// Memory readings (one a second) the flatness check needs: two in each half of the load.
const MIN_MEMORY_SAMPLES: usize = 4;

/// What a soak found.
pub struct SoakReport {
    pub sessions: usize,
    pub transfers_at_once: usize,
    pub opened: usize,
    pub open_seconds: f64,
    pub transfers: u64,
    pub failed: u64,
    pub bytes_per_session: u64,
    pub left: usize,
    /// Why it failed, if it did.
    pub failures: Vec<String>,
}

pub fn run(sessions: usize, transfers: usize, seconds: u64) -> anyhow::Result<()> {
    crate::require_root("cargo xtask soak")?;
    crate::setup::run()?;
    let binary = crate::build_gateway(true)?;
    let report = soak(&binary, sessions, transfers, seconds)?;
    if !report.failures.is_empty() {
        bail!("soak failed: {}", report.failures.join("; "));
    }
    println!("soak: passed");
    Ok(())
}

/// The soak itself, with an already built gateway.
pub fn soak(
    binary: &std::path::Path,
    sessions: usize,
    transfers: usize,
    seconds: u64,
) -> anyhow::Result<SoakReport> {
    // A lab, files and management socket of its own: two soaks on one machine (or a soak
    // beside the tests) must not tear down or ask each other's gateway. A killed soak's lab
    // is removed by the next `cargo xtask test` (or the bench's Ctrl-C handler).
    let prefix = format!("{}s", unique_prefix());
    let lab = Lab::up(&prefix, LabOptions::default())?;
    let root = std::env::temp_dir().join(format!("{prefix}-soak"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let content = pattern(17, 256 * 1024);
    std::fs::write(root.join("f"), &content)?;
    // Every session comes from the one outside address, standing in for as many clients: the
    // per-client limit (4096 by default) is raised past the load.
    let config = TempFile::write(
        &format!("{prefix}-gateway.toml"),
        &format!(
            "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n\n\
             [[publish]]\npublic = \"{}:21\"\nprivate = \"{}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n\n\
             [ftp.policy]\nmax_sessions_per_client = {}\n\n\
             [timeouts]\ntcp_transitory = 15\n\n[sessions]\nsweep_interval = 1\n",
            lab::PUBLIC,
            lab::SERVER,
            sessions + 16
        ),
    );
    let _server = Script::spawn(
        &lab.inside,
        "load_server.py",
        &[&lab::SERVER.to_string(), root.to_str().context("path")?],
    )?;
    wait_listening(&lab.inside, 21, Duration::from_secs(10))?;
    let gateway = GatewayProcess::start_binary(binary, &lab.router, &config.0, &[])?;
    // A reading that fails is an error, not a zero that would pass the memory check.
    let rss = || {
        rss_kib(gateway.pid())
            .with_context(|| format!("no VmRSS for the agent (pid {})", gateway.pid()))
    };
    let rss_start = rss()?;
    println!(
        "soak: {sessions} control sessions, {transfers} downloads at a time for {seconds} s (agent {} MiB)",
        rss_start / 1024
    );

    let mut load = Script::spawn(
        &lab.outside,
        "load_client.py",
        &[
            &SocketAddrV4::new(lab::PUBLIC, 21).ip().to_string(),
            &sessions.to_string(),
            &transfers.to_string(),
            &seconds.to_string(),
            &hex(&sha256(&content)),
        ],
    )?;
    // Memory while the sessions are open: sampled every second.
    let mut samples = Vec::new();
    let started = std::time::Instant::now();
    let load_limit = Duration::from_secs(seconds + 600);
    let output = loop {
        if let Some(output) = load.try_finish()? {
            break output?;
        }
        if started.elapsed() > load_limit {
            bail!("the load did not finish in {load_limit:?}");
        }
        samples.push((started.elapsed().as_secs(), rss()?));
        std::thread::sleep(Duration::from_secs(1));
    };
    let report: serde_json::Value =
        serde_json::from_str(output.trim()).context("the load client's report")?;
    println!("soak: load {report}");

    // After the end: control sessions linger 10 s for retransmissions, fast-path sessions
    // expire after tcp_transitory; the sweep runs every second.
    std::thread::sleep(Duration::from_secs(30));
    let count = |args: &[&str]| -> anyhow::Result<usize> {
        let text = gateway.ask(args)?;
        let value: serde_json::Value = serde_json::from_str(&text)?;
        Ok(value.as_array().map_or(0, Vec::len))
    };
    let left_ftp = count(&["sessions", "--ftp", "--json"])?;
    let left_sessions = count(&["sessions", "--json"])?;
    let left_expectations = count(&["expectations", "--json"])?;
    let rss_end = rss()?;
    drop(gateway);
    drop(lab);
    let _ = std::fs::remove_dir_all(&root);

    // Flat memory: the second half of the load does not grow past the first by more than
    // a tenth. Halves of one sample each (or none) would compare nothing.
    let loaded: Vec<u64> = samples.iter().map(|(_, kib)| *kib).collect();
    let half = loaded.len() / 2;
    let first_peak = loaded[..half].iter().max().copied().unwrap_or(0);
    let second_peak = loaded[half..].iter().max().copied().unwrap_or(0);
    let opened = report["opened"].as_u64().unwrap_or(0) as usize;
    let per_session = first_peak.saturating_sub(rss_start) * 1024 / opened.max(1) as u64;
    println!(
        "soak: agent memory {} MiB at start, peak {} MiB then {} MiB, {} MiB at the end; about {per_session} bytes per control session",
        rss_start / 1024,
        first_peak / 1024,
        second_peak / 1024,
        rss_end / 1024
    );
    println!(
        "soak: left after the end: {left_ftp} control sessions, {left_sessions} session entries, {left_expectations} expectations"
    );
    let mut failures = Vec::new();
    for key in ["open_failed", "transfer_failed"] {
        if report[key].as_u64() != Some(0) {
            failures.push(format!("{key} = {}", report[key]));
        }
    }
    if report["alive_at_end"].as_u64() != Some(opened as u64) || opened != sessions {
        failures.push(format!(
            "{opened} of {sessions} sessions opened, {} alive at the end",
            report["alive_at_end"]
        ));
    }
    if loaded.len() < MIN_MEMORY_SAMPLES {
        failures.push(format!(
            "only {} memory samples during the load: the memory check needs {MIN_MEMORY_SAMPLES}",
            loaded.len()
        ));
    } else if second_peak > first_peak + first_peak / 10 {
        failures.push("agent memory grew during the load".into());
    }
    // A soak that moved no data through the sessions tested only that they opened.
    let transfers_done = report["transfers"].as_u64();
    if transfers_done.is_none_or(|done| done == 0) {
        failures.push(format!(
            "no download completed (transfers = {})",
            report["transfers"]
        ));
    }
    if left_ftp + left_sessions + left_expectations > 0 {
        failures.push("state left in the maps after the sessions ended".into());
    }
    Ok(SoakReport {
        sessions,
        transfers_at_once: transfers,
        opened,
        open_seconds: report["open_seconds"].as_f64().unwrap_or(0.0),
        transfers: report["transfers"].as_u64().unwrap_or(0),
        failed: report["open_failed"].as_u64().unwrap_or(0)
            + report["transfer_failed"].as_u64().unwrap_or(0),
        bytes_per_session: per_session,
        left: left_ftp + left_sessions + left_expectations,
        failures,
    })
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

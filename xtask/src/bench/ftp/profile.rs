//! Where the agent's time goes: `perf record` of it during a loaded run, and the summary.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::capture::stop_gently;

/// `perf record` of one process, with call graphs.
pub(super) struct Perf {
    child: Child,
}

impl Perf {
    pub(super) fn record(pid: u32, output: &Path) -> anyhow::Result<Perf> {
        let child = Command::new("perf")
            .args([
                "record",
                "-q",
                "-F",
                "2999",
                "-g",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(output)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start perf record")?;
        // perf needs a moment to attach before the load starts.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Perf { child })
    }

    pub(super) fn stop(mut self) -> anyhow::Result<()> {
        stop_gently(&mut self.child);
        Ok(())
    }
}

/// Where the agent's time went, from a `perf record` file: the share of its samples under
/// each stage (inclusive), and the hottest functions (exclusive).
pub(super) fn profile_summary(path: &Path) -> anyhow::Result<String> {
    let report = |args: &[&str]| -> anyhow::Result<String> {
        let output = Command::new("perf")
            .args(["report", "--stdio", "-i"])
            .arg(path)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .context("perf report")?;
        if !output.status.success() {
            bail!("perf report failed ({})", output.status);
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    // Inclusive shares of the stages a punted packet goes through.
    let children = report(&[
        "--children",
        "--sort",
        "sym",
        "-g",
        "none",
        "--percent-limit",
        "0.5",
    ])?;
    let stages = [
        (
            "waiting for packets (epoll_wait, including the switch back to the agent)",
            "epoll_wait",
        ),
        ("reading the punt tap (read(2))", "ksys_read"),
        ("reading the punt ring", "RingBuf"),
        (
            "the ALG: parsing, the FTP core, rewriting (ControlTable::on_packet)",
            "ControlTable::on_packet",
        ),
        (
            "  of which the FTP core (gateway_ftp::session::Session::on_segment)",
            "Session::on_segment",
        ),
        (
            "  of which BPF map operations (bpf(2): expectations, claims)",
            "__sys_bpf",
        ),
        (
            "sending (sendto on the raw socket, including the receiving host's stack on veth)",
            "__libc_sendto",
        ),
        (
            "  of which the receiving TCP stack (tcp_v4_rcv)",
            "tcp_v4_rcv",
        ),
        (
            "  of which preemption on the way back from sendto (exit_to_user_mode_loop)",
            "exit_to_user_mode_loop",
        ),
    ];
    let mut out = String::new();
    writeln!(
        out,
        "| stage | share of the agent's samples (inclusive) |\n| --- | --- |"
    )?;
    for (stage, symbol) in stages {
        let share = children
            .lines()
            .filter(|line| {
                line.contains(symbol) && line.trim_start().starts_with(|c: char| c.is_ascii_digit())
            })
            .filter_map(|line| {
                line.split_whitespace()
                    .next()?
                    .trim_end_matches('%')
                    .parse::<f64>()
                    .ok()
            })
            .fold(None, |best: Option<f64>, share| {
                Some(best.map_or(share, |best| best.max(share)))
            });
        match share {
            Some(share) => writeln!(out, "| {stage} | {share:.1}% |")?,
            None => writeln!(out, "| {stage} | below 0.5% |")?,
        }
    }
    let flat = report(&[
        "--no-children",
        "--sort",
        "dso,sym",
        "-g",
        "none",
        "--percent-limit",
        "0.7",
    ])?;
    writeln!(out, "\nHottest functions (exclusive):\n\n```")?;
    for line in flat
        .lines()
        .filter(|line| line.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .take(15)
    {
        writeln!(out, "{}", line.trim_end())?;
    }
    writeln!(out, "```")?;
    Ok(out)
}

//! CPU accounting for the bench: what forwarding costs the router's CPUs, measured the same
//! way for Linux and for the gateway.
//!
//! The kernel forwards a packet in softirq context (the veth's receive path, netfilter and
//! nf_nat_ftp, our XDP and TC programs, and the receiving host's stack run there alike), so
//! the machine's softirq time (`/proc/stat`, all CPUs) over a run, divided by the packets or
//! sessions of the run, is the cost of each; a NAT's own share is its excess over plain
//! forwarding's in the same bench. The agent's work is a process's: its user and system time
//! (`/proc/<pid>/stat`, every thread), added on top. The kernel samples both at its tick (this
//! kernel has no IRQ time accounting): statistical, fine over runs of seconds, and the same
//! for every setup. A tick is counted once, as softirq or as the task's, never both.

use anyhow::{Context as _, bail};

/// `/proc/stat`'s unit (USER_HZ).
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Softirq time since boot of CPU `cpu`, or of all CPUs, in seconds.
pub(super) fn softirq_seconds(cpu: Option<usize>) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    softirq_from_stat(&stat, cpu).map(|ticks| ticks / clock_ticks_per_second())
}

/// The `softirq` field (the 7th value) of the `cpu` (all CPUs) or `cpuN` line of
/// `/proc/stat`, in ticks.
fn softirq_from_stat(stat: &str, cpu: Option<usize>) -> anyhow::Result<f64> {
    let label = cpu.map_or_else(|| "cpu".to_owned(), |cpu| format!("cpu{cpu}"));
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(label.as_str()))
        .with_context(|| format!("no {label} line in /proc/stat"))?;
    let value = line
        .split_whitespace()
        .nth(7)
        .context("no softirq field in /proc/stat's cpu line")?;
    value
        .parse::<f64>()
        .with_context(|| format!("softirq field {value:?} in /proc/stat"))
}

/// User plus system time of process `pid` (all its threads) so far, in seconds.
pub(super) fn process_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    process_ticks(&stat).map(|ticks| ticks / clock_ticks_per_second())
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in ticks. The command name
/// (field 2) may hold spaces and parentheses: fields are counted after its last `)`.
fn process_ticks(stat: &str) -> anyhow::Result<f64> {
    let after_name = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .context("no command name in a /proc/<pid>/stat line")?;
    // After the name: field 3 (state) is the first, so utime (14) is the 12th.
    let mut fields = after_name.split_whitespace().skip(11);
    let mut next = |what: &str| -> anyhow::Result<f64> {
        let value = fields.next().with_context(|| format!("no {what} field"))?;
        value
            .parse::<f64>()
            .with_context(|| format!("{what} field {value:?}"))
    };
    let user = next("utime")?;
    let system = next("stime")?;
    if user < 0.0 || system < 0.0 {
        bail!("negative CPU time in a /proc/<pid>/stat line");
    }
    Ok(user + system)
}

/// CPU used between [`CpuMeter::start`] and [`CpuMeter::stop`]: the softirq time of one CPU
/// or of all, and, with a process to follow, that process's own time.
pub(super) struct CpuMeter {
    cpu: Option<usize>,
    softirq: f64,
    process: Option<(u32, f64)>,
}

/// What a [`CpuMeter`] measured, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct CpuUsed {
    pub(super) softirq: f64,
    /// The followed process's user + system time; 0 without one.
    pub(super) process: f64,
}

impl CpuMeter {
    /// `cpu`: the one CPU whose softirq time counts (the traffic's, when its sender is pinned
    /// there), or `None` for all.
    pub(super) fn start(process: Option<u32>, cpu: Option<usize>) -> anyhow::Result<CpuMeter> {
        let process = match process {
            Some(pid) => Some((pid, process_seconds(pid)?)),
            None => None,
        };
        Ok(CpuMeter {
            cpu,
            softirq: softirq_seconds(cpu)?,
            process,
        })
    }

    pub(super) fn stop(self) -> anyhow::Result<CpuUsed> {
        let process = match self.process {
            Some((pid, before)) => process_seconds(pid)? - before,
            None => 0.0,
        };
        Ok(CpuUsed {
            softirq: softirq_seconds(self.cpu)? - self.softirq,
            process,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softirq_is_the_seventh_value_of_the_cpu_line() {
        let stat = "cpu  100 2 300 4000 50 6 789 0 0 0\ncpu0 1 2 3 4 5 6 7 0 0 0\n\
                    cpu1 1 2 3 4 5 6 17 0 0 0\n";
        assert_eq!(softirq_from_stat(stat, None).expect("softirq"), 789.0);
        assert_eq!(softirq_from_stat(stat, Some(1)).expect("cpu1"), 17.0);
        assert!(softirq_from_stat(stat, Some(2)).is_err());
        assert!(softirq_from_stat("intr 1 2 3\n", None).is_err());
    }

    #[test]
    fn process_time_is_read_after_the_command_name() {
        let stat = "4242 (gate way) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 25 0 0 \
                    -11 0 3 0 100 1000 10 0";
        assert_eq!(process_ticks(stat).expect("ticks"), 42.0);
        assert!(process_ticks("4242 (gateway) S 1 2").is_err());
    }
}

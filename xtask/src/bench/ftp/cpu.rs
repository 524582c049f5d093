//! What FTP sessions cost the router's CPUs (issue 15): Linux's nf_nat_ftp path beside the
//! gateway's BPF programs and agent, accounted the same way (see `bench::cpu`): the machine's
//! softirq time during the loaded run beyond plain forwarding's, per 1,000 sessions, plus for
//! the gateway its agent's own user and system time.

use std::fmt::Write as _;

use super::{FtpSamples, FtpSetup, median, spread};
use crate::bench::{Options, cpu::CpuUsed};

/// CPU seconds of one loaded run per 1,000 sessions completed in it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct CpuPerSessions {
    /// The machine's softirq time.
    softirq: f64,
    /// The agent's user + system time (0 for setups without one).
    pub(super) agent: f64,
}

impl CpuPerSessions {
    pub(super) fn new(used: CpuUsed, sessions: u64) -> CpuPerSessions {
        let thousands = sessions.max(1) as f64 / 1000.0;
        CpuPerSessions {
            softirq: used.softirq / thousands,
            agent: used.process / thousands,
        }
    }
}

#[cfg(test)]
impl CpuPerSessions {
    pub(super) fn with_agent(agent: f64) -> CpuPerSessions {
        CpuPerSessions {
            softirq: 0.0,
            agent,
        }
    }
}

impl std::fmt::Display for CpuPerSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "per 1,000 sessions {:.2} s softirq, {:.2} s agent",
            self.softirq, self.agent
        )
    }
}

fn column(samples: &FtpSamples, value: fn(&CpuPerSessions) -> f64) -> Vec<f64> {
    samples.cpu.iter().map(value).collect()
}

pub(super) fn report(samples: &[FtpSamples], options: &Options) -> anyhow::Result<String> {
    let index = |setup: FtpSetup| FtpSetup::ALL.iter().position(|s| *s == setup);
    let (Some(plain), Some(linux), Some(gateway)) = (
        index(FtpSetup::Plain),
        index(FtpSetup::NftablesHelper),
        index(FtpSetup::Gateway),
    ) else {
        anyhow::bail!("an FTP setup is missing");
    };
    if samples.iter().any(|sample| sample.cpu.is_empty()) {
        return Ok(String::new());
    }
    let softirq = |at: usize| column(&samples[at], |cpu| cpu.softirq);
    let agent = |at: usize| column(&samples[at], |cpu| cpu.agent);
    let plain_softirq = median(&softirq(plain));
    let (plain_low, plain_high) = spread(&softirq(plain));
    let noise = plain_high - plain_low;
    let mut out = String::new();
    writeln!(
        out,
        "\nWhat the sessions cost the router's CPUs, per 1,000 sessions of the loaded runs ({} runs per setup, median\nand range), accounted the same way for every setup: the machine's softirq time (`/proc/stat`, both CPUs), where\nthe kernel forwards every packet (conntrack, NAT and nf_nat_ftp for Linux; our TC programs, the tap punts and\nthe forwarded ACKs for the gateway; the end hosts' TCP stacks for all), beyond plain forwarding's; and for\nthe gateway its agent's own user and system time (`/proc/<pid>/stat`, all threads, busy-polling included). The\nkernel samples both at its tick (no IRQ time accounting here), a tick counts once, as softirq or as the\nagent's; other processes on this shared machine add softirq time of their own, so an added figure within plain\nforwarding's spread ({noise:.2} s) is noise. The profiled gateway run is left out (perf's sampling would count as the\nagent's time).\n",
        options.runs
    )?;
    writeln!(
        out,
        "| setup | softirq s (range) | softirq added over plain | agent CPU s (range) | total added | vs Linux |\n| --- | --- | --- | --- | --- | --- |"
    )?;
    let total_of = |at: usize| median(&softirq(at)) - plain_softirq + median(&agent(at));
    let linux_total = total_of(linux);
    for (at, setup) in FtpSetup::ALL.into_iter().enumerate() {
        let (low, high) = spread(&softirq(at));
        let (agent_low, agent_high) = spread(&agent(at));
        let agent_text = if setup == FtpSetup::Gateway {
            format!("{:.2} ({agent_low:.2}-{agent_high:.2})", median(&agent(at)))
        } else {
            "-".to_owned()
        };
        let (added_text, total_text, ratio_text) = if at == plain {
            ("-".to_owned(), "-".to_owned(), "-".to_owned())
        } else {
            let added = median(&softirq(at)) - plain_softirq;
            let added_text = if added.abs() <= noise {
                format!("{added:.2} (within noise)")
            } else {
                format!("{added:.2}")
            };
            let ratio_text = if linux_total > noise {
                format!("{:.2}x", total_of(at) / linux_total)
            } else {
                "- (Linux's own is within noise)".to_owned()
            };
            (added_text, format!("{:.2}", total_of(at)), ratio_text)
        };
        writeln!(
            out,
            "| {} | {:.2} ({low:.2}-{high:.2}) | {added_text} | {agent_text} | {total_text} | {ratio_text} |",
            setup.name(),
            median(&softirq(at)),
        )?;
    }
    let punted: Vec<f64> = samples[gateway]
        .agent
        .iter()
        .map(|agent| agent.punted_per_session)
        .collect();
    let gateway_agent = median(&agent(gateway));
    let gateway_softirq = median(&softirq(gateway)) - plain_softirq;
    if !punted.is_empty() && median(&punted) > 0.0 {
        writeln!(
            out,
            "\nThe agent took {:.1} punted packets per session: {:.1} us of its CPU per punted packet.",
            median(&punted),
            gateway_agent * 1e3 / median(&punted),
        )?;
    }
    let gateway_total = total_of(gateway);
    // Linux's cost is known to within plain forwarding's spread: the gateway is only more (or
    // less) expensive when it differs from it by more than that.
    let breakdown =
        format!("its agent {gateway_agent:.2} s, the kernel's softirq {gateway_softirq:.2} s");
    let verdict = if gateway_total > linux_total.max(0.0) + noise {
        format!(
            "the gateway costs more CPU per session than Linux: {gateway_total:.2} s against {linux_total:.2} s per 1,000 sessions ({breakdown}; plain forwarding's spread {noise:.2} s)"
        )
    } else if gateway_total + noise < linux_total {
        format!(
            "the gateway costs less CPU per session than Linux: {gateway_total:.2} s against {linux_total:.2} s per 1,000 sessions ({breakdown})"
        )
    } else {
        format!(
            "no difference this run can measure: the gateway {gateway_total:.2} s, Linux {linux_total:.2} s per 1,000 sessions, within plain forwarding's spread of {noise:.2} s"
        )
    };
    let single = if samples[plain].cpu.len() < 2 {
        " One run per setup: no spread, so no estimate of the noise."
    } else {
        ""
    };
    writeln!(out, "\nCPU per session: {verdict}.{single}")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(runs: &[(f64, f64)]) -> FtpSamples {
        FtpSamples {
            cpu: runs
                .iter()
                .map(|&(softirq, agent)| CpuPerSessions { softirq, agent })
                .collect(),
            ..FtpSamples::default()
        }
    }

    fn options() -> Options {
        Options {
            seconds: 5,
            runs: 3,
            ftp_only: true,
            fastpath_only: false,
            busy_poll_us: None,
            cpu_wakeup_latency_us: None,
            ha_only: false,
        }
    }

    #[test]
    fn the_gateway_total_is_its_added_softirq_plus_its_agent() {
        let samples = [
            sample(&[(1.0, 0.0), (1.05, 0.0), (1.1, 0.0)]),
            sample(&[(1.5, 0.0), (1.5, 0.0), (1.6, 0.0)]),
            sample(&[(1.2, 0.8), (1.25, 0.9), (1.3, 1.0)]),
        ];
        let report = report(&samples, &options()).expect("report");
        // Linux adds 0.45; the gateway 0.20 + 0.90 = 1.10: 2.44x.
        assert!(
            report.contains("| 1.25 (1.20-1.30) | 0.20 | 0.90 (0.80-1.00) | 1.10 | 2.44x |"),
            "{report}"
        );
        assert!(
            report.contains("the gateway costs more CPU per session than Linux: 1.10 s against 0.45 s per 1,000 sessions (its agent 0.90 s, the kernel's softirq 0.20 s; plain forwarding's spread 0.10 s)"),
            "{report}"
        );
    }

    #[test]
    fn no_ratio_to_a_linux_cost_within_the_noise() {
        let samples = [
            sample(&[(1.0, 0.0), (1.5, 0.0), (2.0, 0.0)]),
            sample(&[(1.6, 0.0), (1.7, 0.0), (1.8, 0.0)]),
            sample(&[(1.5, 0.1), (1.5, 0.1), (1.5, 0.1)]),
        ];
        let report = report(&samples, &options()).expect("report");
        assert!(
            report.contains("no difference this run can measure: the gateway 0.10 s, Linux 0.20 s"),
            "{report}"
        );
        assert!(
            report.contains("| 0.10 | - (Linux's own is within noise) |"),
            "{report}"
        );
    }
}

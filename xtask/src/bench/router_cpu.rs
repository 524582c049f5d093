//! The fast path's added cost per packet as the router's CPU time (issue 15): the softirq
//! time the machine spent during each UDP run, per packet sent, beside plain forwarding and
//! nftables measured the same way in the same bench (see `cpu`). Unlike the packet rate,
//! which the sender limits on veth, this counts what forwarding each packet cost.

use std::fmt::Write as _;

use super::{Options, Samples, Setup, median, spread};

/// The target: the fast path's added CPU per packet at most this share of nftables'.
const TARGET_RATIO: f64 = 0.5;

fn of(samples: &[Samples], setup: Setup) -> &[f64] {
    Setup::ALL
        .iter()
        .position(|s| *s == setup)
        .and_then(|index| samples.get(index))
        .map_or(&[], |sample| sample.softirq_ns.as_slice())
}

/// Added ns per packet over the setup's plain-forwarding baseline (medians).
fn added(samples: &[Samples], setup: Setup) -> f64 {
    median(of(samples, setup)) - median(of(samples, setup.baseline()))
}

/// The baseline's own run-to-run spread, ns per packet: a difference below it is noise.
fn noise(samples: &[Samples], setup: Setup) -> f64 {
    let (low, high) = spread(of(samples, setup.baseline()));
    high - low
}

/// What the comparison with nftables says, decided from the numbers.
enum Verdict {
    Met(f64),
    Missed(f64),
    /// nftables' own added cost is within the baseline's noise: no ratio to take.
    Unmeasurable,
}

fn verdict(samples: &[Samples], setup: Setup) -> Verdict {
    let nftables = added(samples, setup.nftables());
    if nftables <= noise(samples, setup) || nftables <= 0.0 {
        return Verdict::Unmeasurable;
    }
    let ratio = added(samples, setup) / nftables;
    if ratio <= TARGET_RATIO {
        Verdict::Met(ratio)
    } else {
        Verdict::Missed(ratio)
    }
}

pub(super) fn report(samples: &[Samples], options: &Options) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "\n## Router CPU per packet\n")?;
    writeln!(
        out,
        "The UDP runs above ({} runs of {} s per setup), measured in CPU time rather than rate: the machine's softirq\ntime during each run, divided by the packets the sender sent. The sender is pinned to one CPU (`iperf3 -A`), and\nthe kernel forwards each packet in softirq context on the CPU that sent it, whatever does the work: the veths'\nreceive path, netfilter's NAT, our TC and XDP programs, and the receiving host's UDP stack all run there, so\nthat CPU's softirq time (`/proc/stat`) is the traffic's, every setup is accounted the same way, and a NAT's own cost is\nits excess over plain forwarding between the same end hosts (native XDP's over wire-like plain forwarding, and\nits ratio against nftables between those hosts). The kernel samples at its tick (no IRQ time accounting here):\nstatistical, and the other processes on this shared machine add their own softirq time, so a difference\nwithin the baseline's run-to-run spread is marked as noise. Median and range.\n",
        options.runs, options.seconds
    )?;
    writeln!(
        out,
        "| setup | softirq ns per packet (range) | added over plain | vs nftables |\n| --- | --- | --- | --- |"
    )?;
    for setup in Setup::ALL {
        let values = of(samples, setup);
        if values.is_empty() {
            continue;
        }
        let (low, high) = spread(values);
        let (added_text, ratio_text) = if setup.baseline() == setup {
            ("-".to_owned(), "-".to_owned())
        } else {
            let added = added(samples, setup);
            let noise = noise(samples, setup);
            let added_text = if added.abs() <= noise {
                format!("{added:.0} (within noise, +/-{noise:.0})")
            } else {
                format!("{added:.0}")
            };
            let ratio_text = match verdict(samples, setup) {
                Verdict::Met(ratio) | Verdict::Missed(ratio) => format!("{ratio:.2}x"),
                Verdict::Unmeasurable => format!(
                    "- (nftables' own {:.0} is within noise)",
                    added_of_nftables(samples, setup)
                ),
            };
            (added_text, ratio_text)
        };
        writeln!(
            out,
            "| {} | {:.0} ({low:.0}-{high:.0}) | {added_text} | {ratio_text} |",
            setup.name(),
            median(values),
        )?;
    }
    let mut verdicts = Vec::new();
    for (hook, setup) in [("TC", Setup::GatewayTc), ("native XDP", Setup::GatewayXdp)] {
        if of(samples, setup).is_empty() {
            continue;
        }
        // A ratio whose numerator is itself within the noise is a measurement of little worth:
        // said beside the verdict, which the numbers still decide.
        let own_noise = if added(samples, setup).abs() <= noise(samples, setup) {
            format!(
                ", though its own added cost is within the baseline's spread of {:.0} ns",
                noise(samples, setup)
            )
        } else {
            String::new()
        };
        verdicts.push(match verdict(samples, setup) {
            Verdict::Met(ratio) => format!("{hook} met ({ratio:.2}x{own_noise})"),
            Verdict::Missed(ratio) => format!(
                "{hook} missed ({ratio:.2}x: {:.0} ns added against nftables' {:.0}{own_noise})",
                added(samples, setup),
                added_of_nftables(samples, setup)
            ),
            Verdict::Unmeasurable => format!(
                "{hook} not measurable in this run (nftables' own added {:.0} ns is within the baseline's spread of {:.0} ns)",
                added_of_nftables(samples, setup),
                noise(samples, setup)
            ),
        });
    }
    writeln!(
        out,
        "\nTarget (issue 15): the fast path's added router CPU per packet <= {TARGET_RATIO:.1}x nftables', with BPF forwarding (the\ndefault): {}.{}",
        verdicts.join("; "),
        if options.runs < 2 {
            " One run per setup: no spread, so no estimate of the noise."
        } else {
            ""
        }
    )?;
    Ok(out)
}

fn added_of_nftables(samples: &[Samples], setup: Setup) -> f64 {
    added(samples, setup.nftables())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples whose softirq figures are given per setup (others: the baseline's).
    fn samples(figures: &[(Setup, &[f64])]) -> Vec<Samples> {
        Setup::ALL
            .iter()
            .map(|setup| {
                let values = figures
                    .iter()
                    .find(|(s, _)| s == setup)
                    .map_or(vec![1000.0; 3], |(_, values)| values.to_vec());
                Samples {
                    tcp_gbps: vec![1.0; values.len()],
                    udp_pps: vec![1.0; values.len()],
                    softirq_ns: values,
                }
            })
            .collect()
    }

    fn options() -> Options {
        Options {
            seconds: 5,
            runs: 3,
            ftp_only: false,
            fastpath_only: true,
            busy_poll_us: None,
            cpu_wakeup_latency_us: None,
            ha_only: false,
        }
    }

    #[test]
    fn the_target_is_decided_from_the_added_cost_beside_the_same_hosts() {
        let samples = samples(&[
            (Setup::Plain, &[1000.0, 1010.0, 1020.0]),
            (Setup::Nftables, &[1400.0, 1410.0, 1420.0]),
            // 150 added against nftables' 400: 0.38x.
            (Setup::GatewayTc, &[1150.0, 1160.0, 1170.0]),
            (Setup::PlainWireLike, &[2000.0, 2000.0, 2010.0]),
            (Setup::NftablesWireLike, &[2400.0, 2400.0, 2410.0]),
            // 300 added against nftables' 400 between wire-like hosts: 0.75x.
            (Setup::GatewayXdp, &[2300.0, 2300.0, 2310.0]),
        ]);
        let report = report(&samples, &options()).expect("report");
        assert!(report.contains("TC met (0.38x)"), "{report}");
        assert!(
            report.contains("native XDP missed (0.75x: 300 ns added against nftables' 400)"),
            "{report}"
        );
        assert!(
            report.contains("| 1160 (1150-1170) | 150 | 0.38x |"),
            "{report}"
        );
    }

    #[test]
    fn a_verdict_says_when_the_fast_paths_own_cost_is_within_the_noise() {
        let samples = samples(&[
            (Setup::PlainWireLike, &[1800.0, 2100.0, 2400.0]),
            (Setup::NftablesWireLike, &[3000.0, 3000.0, 3100.0]),
            (Setup::GatewayXdp, &[2560.0, 2570.0, 2600.0]),
        ]);
        let report = report(&samples, &options()).expect("report");
        assert!(
            report.contains("native XDP missed (0.52x: 470 ns added against nftables' 900, though its own added cost is within the baseline's spread of 600 ns)"),
            "{report}"
        );
    }

    #[test]
    fn no_verdict_when_nftables_cost_is_within_the_noise() {
        let samples = samples(&[
            (Setup::Plain, &[900.0, 1000.0, 1300.0]),
            (Setup::Nftables, &[1100.0, 1200.0, 1250.0]),
            (Setup::GatewayTc, &[1000.0, 1050.0, 1100.0]),
        ]);
        let report = report(&samples, &options()).expect("report");
        assert!(
            report.contains("TC not measurable in this run (nftables' own added 200 ns is within the baseline's spread of 400 ns)"),
            "{report}"
        );
        assert!(!report.contains("TC met"), "{report}");
    }
}

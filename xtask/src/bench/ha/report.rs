//! The high-availability section of BENCHMARKS.md.

use std::fmt::Write as _;

use super::{BURST_FLOWS, HaSamples, Pair, TABLE_FLOWS};
use crate::bench::{Options, median, spread};

pub(super) fn report(samples: &[HaSamples], options: &Options) -> String {
    let mut text = String::new();
    let _ = write!(
        text,
        "\n## High availability\n\nThe HA lab of the tests (inside and outside segments as bridges, two router namespaces on both,\na sync link between them, keepalived in each with unicast VRRP, `advert_int 1`, as the packaged example), a\npair of its own per figure, {runs} runs alternating; median and range. Gateway pair: the agents with the\nstate sync. Linux: nftables SNAT of the inside network to the public virtual address, `nf_nat_ftp` loaded,\nconntrackd (FTFW over UDP on the sync link, external cache, TCP window tracking off) run by keepalived with\nthe actions of conntrackd's own `primary-backup.sh`. Written by `cargo xtask bench`, or alone (this section\nonly) by `cargo xtask bench --ha-only`.\n\n\
- Failover gap: a TCP transfer from the inside host through the masquerade (8 KiB every 5 ms), the active\n  node's links cut and its daemons killed (`kill -9`); the longest pause between the receiver's reads. Most of\n  it is keepalived's master-down timer (about 3.6 s), then TCP's backed-off retransmission. On the Linux\n  side this connection would also go on without conntrackd (the kernel picks an established TCP connection\n  up mid-stream, `nf_conntrack_tcp_loose`, and SNAT keeps its source port while that is free), so that\n  row times keepalived and the commit of conntrackd's cache; the throughput row is what conntrackd's\n  sync itself does. TCP retransmits about 3.0 s and 6.2 s after the loss began: a takeover just before the
  first makes a gap of about 3.1 s, just after it one of about 6.5 s. Where in keepalived's 1 s advert
  cycle the active dies decides which, so it is killed right after an advert reached the standby (its\n  master-down timer then runs 3.6 s in every run). The takeover column is the time from the kill until\n  node 2 carried the state in its data path (the gateway: the agent logged its promotion, programs\n  attached; Linux: the notify script's mark after `conntrackd -c` committed the cache to the kernel),\n  polled every 20 ms by what costs the nodes nothing.\n\
- Sync throughput: {burst} new UDP flows (a datagram each, echoed) created on the active as fast as one\n  sender does, with {table} flows in the table; flows per second from the first until the standby holds them\n  all (the gateway's `gateway status` session count, conntrackd's external cache). A figure bounded by the sender when\n  the standby keeps up.\n\
- Sync cost: one iperf3 TCP stream ({seconds} s) through the active with {table} short flows in the table,\n  with the standby syncing, and on a lab where no standby runs (the gateway's sync idle, Linux without\n  conntrackd). Both nodes share this machine's cores with iperf3, so the standby's work (applying) counts\n  here as much as the active's (the gateway's 50 ms ticks reading the entries its change events name; conntrackd's event handling).\n\n",
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
pub(in crate::bench) fn splice_section(text: &str, section: &str) -> String {
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

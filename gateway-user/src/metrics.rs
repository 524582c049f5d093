//! Prometheus text exposition (format 0.0.4) of the agent's counters and gauges, served on
//! `[metrics] listen` at `/metrics`. Names follow Prometheus conventions: a `gateway_`
//! prefix, `_total` on counters, labels for what varies (outcome, check).

use std::fmt::Write as _;

use gateway_common::Counter;

/// What one scrape reports.
pub struct Snapshot {
    pub fastpath: Vec<(Counter, u64)>,
    /// The ALG's counters by name (`alg_packets`, ..., `alg_violation_<check>`).
    pub alg: Vec<(String, u64)>,
    pub sessions: usize,
    pub ftp_sessions: usize,
    pub expectations: usize,
    pub uptime_seconds: u64,
}

pub fn render(snapshot: &Snapshot) -> String {
    let mut text = String::new();
    let family = |text: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name.to_owned()
    };
    let name = family(
        &mut text,
        "gateway_fastpath_packets_total",
        "counter",
        "Packets the fast path handled, by outcome (translated, passed, dropped by reason), and what became of translated ones (forwarded, answered with an ICMP error, route lookups refused by reason).",
    );
    for (counter, value) in &snapshot.fastpath {
        let _ = writeln!(text, "{name}{{outcome=\"{}\"}} {value}", counter.name());
    }
    let violations = family(
        &mut text,
        "gateway_ftp_violations_total",
        "counter",
        "FTP policy violations, by check.",
    );
    for (alg_name, value) in &snapshot.alg {
        if let Some(check) = alg_name.strip_prefix("alg_violation_") {
            let _ = writeln!(text, "{violations}{{check=\"{check}\"}} {value}");
        }
    }
    for (alg_name, value) in &snapshot.alg {
        if alg_name.starts_with("alg_violation_") || alg_name == "alg_violations" {
            continue;
        }
        let name = format!("gateway_ftp_{}_total", alg_name.trim_start_matches("alg_"));
        let _ = writeln!(
            text,
            "# HELP {name} FTP ALG counter {alg_name}.\n# TYPE {name} counter\n{name} {value}"
        );
    }
    for (name, help, value) in [
        (
            "gateway_sessions",
            "Entries in the fast path's session table (one per direction).",
            snapshot.sessions as u64,
        ),
        (
            "gateway_ftp_control_sessions",
            "FTP control sessions the ALG holds.",
            snapshot.ftp_sessions as u64,
        ),
        (
            "gateway_expectations",
            "Announced data connections not opened yet.",
            snapshot.expectations as u64,
        ),
        (
            "gateway_uptime_seconds",
            "Seconds since the agent started.",
            snapshot.uptime_seconds,
        ),
    ] {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_labelled_samples() {
        let text = render(&Snapshot {
            fastpath: vec![(Counter::SessionHit, 7), (Counter::Punted, 2)],
            alg: vec![
                ("alg_packets".into(), 2),
                ("alg_violations".into(), 1),
                ("alg_violation_bounce".into(), 1),
            ],
            sessions: 4,
            ftp_sessions: 1,
            expectations: 0,
            uptime_seconds: 9,
        });
        assert!(text.contains("# TYPE gateway_fastpath_packets_total counter"));
        assert!(text.contains("gateway_fastpath_packets_total{outcome=\"session_hit\"} 7"));
        assert!(text.contains("gateway_ftp_violations_total{check=\"bounce\"} 1"));
        assert!(text.contains("gateway_ftp_packets_total 2"));
        assert!(text.contains("gateway_sessions 4"));
        // Every sample line belongs to a family declared before it.
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{line}");
            }
        }
    }
}

//! Prometheus text exposition (format 0.0.4) of the agent's counters and gauges, served on
//! `[metrics] listen` at `/metrics`. Names follow Prometheus conventions: a `gateway_`
//! prefix, `_total` on counters, labels for what varies (outcome, check).
//!
//! The text is written by `prometheus-client` from one snapshot per scrape: the values live
//! in the BPF maps and the ALG's own counters, so the snapshot is a collector of constant
//! samples rather than a registry of live metrics that would have to mirror them.

pub mod endpoint;

use gateway_common::Counter;
use gateway_ftp::policy::Check;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::ha::{Role, sync::SyncStatus};

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// What one scrape reports.
#[derive(Debug)]
pub struct Snapshot {
    pub fastpath: Vec<(Counter, u64)>,
    /// The ALG's totals by bare name (`packets`, `sessions_opened`, ...), each exposed as
    /// `gateway_ftp_<name>_total`.
    pub alg: Vec<(&'static str, u64)>,
    /// FTP policy violations by check.
    pub violations: Vec<(Check, u64)>,
    pub sessions: usize,
    pub ftp_sessions: usize,
    pub expectations: usize,
    pub uptime_seconds: u64,
    /// `[ha]`: the node's role and promotions; `None` for a single gateway.
    pub ha: Option<HaSnapshot>,
}

/// A node of an active/standby pair, as a scrape sees it.
#[derive(Debug)]
pub struct HaSnapshot {
    pub role: Role,
    pub transitions: u64,
    pub promotions: u64,
    /// Seconds the last promotion took, from the `master` request to programs attached.
    pub last_promotion_seconds: Option<f64>,
    /// The state sync; `None` without `[ha] key_file`.
    pub sync: Option<SyncStatus>,
}

impl HaSnapshot {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "gateway_ha_role",
            "1 for the role keepalived last gave this node (master translates; backup and fault pass nothing), 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for role in Role::ALL {
            ConstGauge::new(i64::from(role == self.role))
                .encode(family.encode_family(&[("role", role.name())])?)?;
        }
        for (name, help, value) in [
            (
                "gateway_ha_transitions",
                "Role changes since the agent started.",
                self.transitions,
            ),
            (
                "gateway_ha_promotions",
                "Promotions to master (programs attached) since the agent started.",
                self.promotions,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        if let Some(seconds) = self.last_promotion_seconds {
            let metric = encoder.encode_descriptor(
                "gateway_ha_last_promotion_seconds",
                "How long the last promotion took, from the master request to programs attached.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(seconds).encode(metric)?;
        }
        if let Some(sync) = &self.sync {
            encode_sync(sync, encoder)?;
        }
        Ok(())
    }
}

/// The state sync's counters and lag.
fn encode_sync(sync: &SyncStatus, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let counters = &sync.counters;
    for (name, help, value) in [
        (
            "gateway_ha_sync_connections",
            "State-sync connections authenticated.",
            counters.connections,
        ),
        (
            "gateway_ha_sync_refused",
            "State-sync connections refused: not from the peer, or without the key.",
            counters.refused,
        ),
        (
            "gateway_ha_sync_frames_sent",
            "Frames sent to the standby (keepalives included).",
            counters.frames_sent,
        ),
        (
            "gateway_ha_sync_records_sent",
            "Records (entries written or removed) sent to the standby.",
            counters.records_sent,
        ),
        (
            "gateway_ha_sync_frames_dropped",
            "Frames dropped because the queue to the standby was full.",
            counters.frames_dropped,
        ),
        (
            "gateway_ha_sync_snapshots_sent",
            "Bulk snapshots sent to the standby.",
            counters.snapshots_sent,
        ),
        (
            "gateway_ha_sync_resyncs",
            "Snapshots forced by dropped frames.",
            counters.resyncs,
        ),
        (
            "gateway_ha_sync_events",
            "Change events drained from the fast path on the active node.",
            counters.events,
        ),
        (
            "gateway_ha_sync_full_walks",
            "Whole walks of the synced maps (snapshots, lost events, periodic reconciliation).",
            counters.full_walks,
        ),
        (
            "gateway_ha_sync_frames_applied",
            "Frames from the active node applied to the maps.",
            counters.frames_applied,
        ),
        (
            "gateway_ha_sync_records_applied",
            "Records from the active node applied to the maps.",
            counters.records_applied,
        ),
        (
            "gateway_ha_sync_apply_errors",
            "Records the maps refused.",
            counters.apply_errors,
        ),
        (
            "gateway_ha_sync_snapshots_applied",
            "Bulk snapshots from the active node applied to their end.",
            counters.snapshots_applied,
        ),
        (
            "gateway_ha_sync_promotions_unsynced",
            "Promotions to master without a complete copy of the peer's state.",
            counters.promotions_unsynced,
        ),
        (
            "gateway_ha_sync_alg_records_sent",
            "FTP control-session records (changed or removed, snapshots included) queued for the standby.",
            counters.alg_records_sent,
        ),
        (
            "gateway_ha_sync_alg_snapshots_sent",
            "Snapshots of the FTP control sessions sent to the standby.",
            counters.alg_snapshots_sent,
        ),
        (
            "gateway_ha_sync_alg_records_dropped",
            "FTP control-session records dropped because the queue to the standby was full (their packets left without them).",
            counters.alg_records_dropped,
        ),
        (
            "gateway_ha_sync_alg_records_applied",
            "FTP control-session records from the active node applied to the sessions held.",
            counters.alg_records_applied,
        ),
    ] {
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(metric)?;
    }
    let metric = encoder.encode_descriptor(
        "gateway_ha_sync_lag_frames",
        "Frames sent to the standby and not yet acknowledged as applied.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(sync.lag_frames as i64).encode(metric)?;
    let metric = encoder.encode_descriptor(
        "gateway_ha_sync_in_sync",
        "1 on a standby holding a complete copy of the active node's state (a snapshot applied to its end), else 0.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(i64::from(sync.in_sync)).encode(metric)?;
    for (name, help, value) in [
        (
            "gateway_ha_sync_alg_unacked_records",
            "FTP control-session records sent to the standby and not yet acknowledged as applied.",
            sync.alg_unacked_records,
        ),
        (
            "gateway_ha_sync_alg_sessions_held",
            "FTP control sessions this standby holds for the active node.",
            sync.alg_sessions_held,
        ),
    ] {
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value as i64).encode(metric)?;
    }
    Ok(())
}

/// The ALG total that [`Snapshot::violations`] breaks down: exposed only by check, since an
/// unlabelled sample would land in the labelled family of the same name.
const VIOLATIONS_TOTAL: &str = "violations";

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "gateway_fastpath_packets",
            "Packets the fast path handled, by outcome (translated, passed, dropped by reason), and what became of translated ones (forwarded, answered with an ICMP error, route lookups refused by reason).",
            None,
            MetricType::Counter,
        )?;
        for (counter, value) in &self.fastpath {
            ConstCounter::new(*value)
                .encode(family.encode_family(&[("outcome", counter.name())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "gateway_ftp_violations",
            "FTP policy violations, by check.",
            None,
            MetricType::Counter,
        )?;
        for (check, value) in &self.violations {
            ConstCounter::new(*value).encode(family.encode_family(&[("check", check.name())])?)?;
        }
        for (name, value) in &self.alg {
            if *name == VIOLATIONS_TOTAL {
                continue;
            }
            let (family, help) = (
                format!("gateway_ftp_{name}"),
                format!("FTP ALG counter alg_{name}."),
            );
            let metric = encoder.encode_descriptor(&family, &help, None, MetricType::Counter)?;
            ConstCounter::new(*value).encode(metric)?;
        }
        for (name, help, value) in [
            (
                "gateway_sessions",
                "Entries in the fast path's session table (one per direction).",
                self.sessions as u64,
            ),
            (
                "gateway_ftp_control_sessions",
                "FTP control sessions the ALG holds.",
                self.ftp_sessions as u64,
            ),
            (
                "gateway_expectations",
                "Announced data connections not opened yet.",
                self.expectations as u64,
            ),
            (
                "gateway_uptime_seconds",
                "Seconds since the agent started.",
                self.uptime_seconds,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        if let Some(ha) = &self.ha {
            ha.encode(&mut encoder)?;
        }
        Ok(())
    }
}

pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    // Writing to a String cannot fail, nor can encoding the numbers and names above.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_labelled_samples() {
        let text = render(Snapshot {
            fastpath: vec![(Counter::SessionHit, 7), (Counter::Punted, 2)],
            alg: vec![("packets", 2), ("violations", 1)],
            violations: vec![(Check::Bounce, 1), (Check::OutOfState, 0)],
            sessions: 4,
            ftp_sessions: 1,
            expectations: 0,
            uptime_seconds: 9,
            ha: None,
        });
        assert!(text.contains("# TYPE gateway_fastpath_packets_total counter"));
        assert!(text.contains("gateway_fastpath_packets_total{outcome=\"session_hit\"} 7"));
        assert!(text.contains("gateway_ftp_violations_total{check=\"bounce\"} 1"));
        assert!(text.contains("# HELP gateway_ftp_packets_total FTP ALG counter alg_packets."));
        assert!(text.contains("gateway_ftp_packets_total 2"));
        assert!(text.contains("# TYPE gateway_sessions gauge\ngateway_sessions 4\n"));
        assert!(text.contains("gateway_uptime_seconds 9"));
        assert!(
            text.contains("# HELP gateway_ftp_violations_total FTP policy violations, by check.\n")
        );
        // The unlabelled total is not repeated inside the labelled family.
        assert!(!text.contains("gateway_ftp_violations_total 1"), "{text}");
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
        assert!(
            !text.contains("gateway_ha"),
            "a single gateway has no ha samples"
        );
    }

    #[test]
    fn an_ha_node_exposes_its_role_and_promotions() {
        let text = render(Snapshot {
            fastpath: Vec::new(),
            alg: Vec::new(),
            violations: Vec::new(),
            sessions: 0,
            ftp_sessions: 0,
            expectations: 0,
            uptime_seconds: 1,
            ha: Some(HaSnapshot {
                role: Role::Backup,
                transitions: 3,
                promotions: 1,
                last_promotion_seconds: Some(0.0025),
                sync: Some(SyncStatus {
                    link: "receiving".into(),
                    lag_frames: 0,
                    last_applied_ms_ago: Some(120),
                    in_sync: true,
                    alg_unacked_records: 0,
                    alg_sessions_held: 3,
                    counters: crate::ha::sync::SyncCounters {
                        frames_applied: 12,
                        refused: 1,
                        snapshots_applied: 1,
                        alg_records_applied: 5,
                        ..Default::default()
                    },
                }),
            }),
        });
        assert!(
            text.contains("gateway_ha_role{role=\"master\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_ha_role{role=\"backup\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_ha_role{role=\"fault\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("gateway_ha_transitions_total 3\n"), "{text}");
        assert!(text.contains("gateway_ha_sync_in_sync 1\n"), "{text}");
        assert!(
            text.contains("gateway_ha_sync_snapshots_applied_total 1\n"),
            "{text}"
        );
        assert!(text.contains("gateway_ha_promotions_total 1\n"), "{text}");
        assert!(
            text.contains("gateway_ha_last_promotion_seconds 0.0025\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_ha_sync_frames_applied_total 12\n"),
            "{text}"
        );
        assert!(text.contains("gateway_ha_sync_refused_total 1\n"), "{text}");
        assert!(text.contains("gateway_ha_sync_lag_frames 0\n"), "{text}");
        assert!(
            text.contains("gateway_ha_sync_alg_records_applied_total 5\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_ha_sync_alg_sessions_held 3\n"),
            "{text}"
        );
    }
}

//! What the running agent reports about itself: the status (as fields), its counters, and
//! the snapshot a metrics scrape renders.

use crate::{
    dataplane::monotonic_now_ns,
    management::{
        InterfaceStatus, MasqueradeStatus, PolicyStatus, PuntStatus, Status, SysctlsStatus,
    },
    metrics, system,
};

use super::Agent;

impl Agent {
    pub(super) fn status(&self) -> anyhow::Result<Status> {
        let now = monotonic_now_ns();
        let policy = &self.config.ftp.policy;
        Ok(Status {
            pid: std::process::id(),
            config: self.config_path.display().to_string(),
            uptime_seconds: self.started.elapsed().as_secs(),
            interfaces: self
                .attachments
                .iter()
                .zip(["inside", "outside"])
                .zip([
                    &self.config.interfaces.inside,
                    &self.config.interfaces.outside,
                ])
                .zip(self.ifindexes)
                .map(|(((attachment, role), name), ifindex)| InterfaceStatus {
                    role: role.into(),
                    name: name.clone(),
                    ifindex,
                    hook: attachment
                        .as_ref()
                        .map(|attachment| attachment.hook.to_string()),
                })
                .collect(),
            programs: self.dataplane.program_ids(),
            sessions: self.dataplane.sessions()?.len(),
            ftp_sessions: self.alg.table.connections(now).len(),
            expectations: self.dataplane.expectations()?.len(),
            publishes: self.config.publish.len(),
            punt: match &self.punt_tap {
                Some((name, ifindex)) => PuntStatus::Tap {
                    name: name.clone(),
                    ifindex: *ifindex,
                },
                None => PuntStatus::Ring,
            },
            masquerade: self
                .config
                .masquerade
                .as_ref()
                .map(|masquerade| MasqueradeStatus {
                    networks: masquerade
                        .networks
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    addresses: masquerade.addresses.clone(),
                    first_port: *masquerade.ports.start(),
                    last_port: *masquerade.ports.end(),
                    filtering: masquerade.filtering,
                }),
            policy: PolicyStatus {
                on_violation: policy.on_violation,
                tls: policy.tls,
                anonymous: policy.anonymous,
                pipelining: policy.pipelining,
                deny_commands: policy.deny_commands.len(),
                allow_users: policy.allow_users.len(),
                deny_users: policy.deny_users.len(),
            },
            sysctls: self
                .host_settings
                .as_ref()
                .map(|host_settings| SysctlsStatus {
                    managed: host_settings.managed(),
                    record: host_settings.record_path().display().to_string(),
                    settings: host_settings.status(),
                })
                .unwrap_or_default(),
            ha: self.ha_status(),
        })
    }

    /// The ALG's counters, with the packets the punt tap dropped.
    pub(super) fn alg_counters(&self) -> Vec<(String, u64)> {
        let mut counters = self.alg.counters();
        if let Some(dropped) = self.punt_tap_dropped() {
            counters.push(("alg_punt_tap_dropped".into(), dropped));
        }
        counters
    }

    /// Packets the punt tap dropped (its queue full: the agent fell behind), which only the
    /// kernel's interface statistics know; none without a tap.
    fn punt_tap_dropped(&self) -> Option<u64> {
        self.punt_tap
            .as_ref()
            .map(|(name, _)| system::tx_dropped(name).unwrap_or(0))
    }

    /// What a metrics scrape reports now.
    pub(super) fn snapshot(&self) -> metrics::Snapshot {
        let now = monotonic_now_ns();
        let stats = self.alg.table.stats();
        metrics::Snapshot {
            fastpath: self.dataplane.counters().unwrap_or_default(),
            alg: stats
                .totals()
                .into_iter()
                .chain(self.alg.own_totals())
                .chain(
                    self.punt_tap_dropped()
                        .map(|dropped| ("punt_tap_dropped", dropped)),
                )
                .collect(),
            violations: stats.violations().collect(),
            sessions: self
                .dataplane
                .sessions()
                .map_or(0, |sessions| sessions.len()),
            ftp_sessions: self.alg.table.connections(now).len(),
            expectations: self
                .dataplane
                .expectations()
                .map_or(0, |expectations| expectations.len()),
            uptime_seconds: self.started.elapsed().as_secs(),
            ha: self.ha_snapshot(),
        }
    }
}

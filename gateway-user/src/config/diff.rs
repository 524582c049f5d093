//! What a reload changes: the difference between the running configuration and a new one,
//! sorted by how it can be applied (refused until a restart, or applied while running).

use super::{Config, Publish};

/// A part of the configuration a running agent cannot change: a new value needs a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPart {
    /// The fast path is attached to them.
    Interfaces,
    /// Hook, attach mode, pins, punt transport and sysctl management are fixed at start.
    Dataplane,
    /// The session table's capacity is its map's size.
    MaxSessions,
    /// The socket this very reload arrives on.
    Management,
    /// The metrics listener.
    Metrics,
    /// `[ha]`: whether the agent starts as a standby, and the sync's peer and port.
    Ha,
}

impl RestartPart {
    /// The config key that names it.
    pub fn key(self) -> &'static str {
        match self {
            RestartPart::Interfaces => "interfaces",
            RestartPart::Dataplane => "dataplane",
            RestartPart::MaxSessions => "sessions.max",
            RestartPart::Management => "management",
            RestartPart::Metrics => "metrics",
            RestartPart::Ha => "ha",
        }
    }
}

/// The difference between two configurations, as a reload applies it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigDiff {
    /// Changed parts that need a restart, in the file's order. Any: the reload is refused
    /// and nothing else is applied.
    pub restart: Vec<RestartPart>,
    /// The agent's new scheduling (`Some(None)`: back to the ordinary scheduler); the one
    /// change that can fail on its own, so it is applied first.
    pub realtime_priority: Option<Option<u8>>,
    /// The wake-up latency the agent asks of idle CPUs, when it changed (`Some(None)`: it
    /// withdraws its request).
    pub cpu_wakeup_latency_us: Option<Option<u32>>,
    /// Publishes gone from the new file.
    pub unpublished: Vec<Publish>,
    /// Publishes new in it.
    pub published: Vec<Publish>,
    /// Masquerade, timeouts or control ports changed: the fast path's NAT settings are
    /// written again.
    pub nat: bool,
    /// `[ftp]`, the publishes or the timeouts changed: the ALG takes new settings, running
    /// sessions included.
    pub alg: bool,
    /// The new sweep interval, when it changed.
    pub sweep_interval: Option<u64>,
}

impl Config {
    /// What changes from `self` (running) to `new`.
    pub fn diff(&self, new: &Config) -> ConfigDiff {
        let restart = [
            (RestartPart::Interfaces, new.interfaces != self.interfaces),
            (RestartPart::Dataplane, new.dataplane != self.dataplane),
            (
                RestartPart::MaxSessions,
                new.max_sessions != self.max_sessions,
            ),
            (
                RestartPart::Management,
                new.management_socket != self.management_socket,
            ),
            (
                RestartPart::Metrics,
                new.metrics_listen != self.metrics_listen,
            ),
            (RestartPart::Ha, new.ha != self.ha),
        ]
        .into_iter()
        .filter_map(|(part, changed)| changed.then_some(part))
        .collect();
        let missing_from = |publishes: &[Publish], from: &[Publish]| -> Vec<Publish> {
            publishes
                .iter()
                .filter(|publish| !from.contains(publish))
                .cloned()
                .collect()
        };
        ConfigDiff {
            restart,
            realtime_priority: (new.ftp.realtime_priority != self.ftp.realtime_priority)
                .then_some(new.ftp.realtime_priority),
            cpu_wakeup_latency_us: (new.ftp.cpu_wakeup_latency_us
                != self.ftp.cpu_wakeup_latency_us)
                .then_some(new.ftp.cpu_wakeup_latency_us),
            unpublished: missing_from(&self.publish, &new.publish),
            published: missing_from(&new.publish, &self.publish),
            nat: new.masquerade != self.masquerade
                || new.timeouts != self.timeouts
                || new.ftp.control_ports != self.ftp.control_ports,
            alg: new.ftp != self.ftp
                || new.publish != self.publish
                || new.timeouts != self.timeouts,
            sweep_interval: (new.sweep_interval != self.sweep_interval)
                .then_some(new.sweep_interval),
        }
    }
}

impl ConfigDiff {
    /// Whether the new configuration is the running one.
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = r#"
        [interfaces]
        inside = "veth-in"
        outside = "veth-out"

        [masquerade]
        networks = ["10.0.0.0/24"]
        addresses = ["203.0.113.1"]

        [[publish]]
        public = "203.0.113.1:21"
        private = "10.0.0.2:21"
        protocol = "tcp"
        alg = "ftp"
    "#;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("test.toml")).unwrap()
    }

    fn config(extra: &str) -> Config {
        parse(&format!("{BASE}\n{extra}"))
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let diff = config("").diff(&config(""));
        assert!(diff.is_empty(), "{diff:?}");
    }

    #[test]
    fn parts_fixed_at_start_need_a_restart_in_the_files_order() {
        let old = config("");
        let new = parse(&format!(
            "{}\n[sessions]\nmax = 2048\n[metrics]\nlisten = \"127.0.0.1:9469\"",
            BASE.replace("veth-in", "eth1")
        ));
        let diff = old.diff(&new);
        assert_eq!(
            diff.restart,
            [
                RestartPart::Interfaces,
                RestartPart::MaxSessions,
                RestartPart::Metrics
            ]
        );
        assert_eq!(
            diff.restart
                .iter()
                .map(|part| part.key())
                .collect::<Vec<_>>(),
            ["interfaces", "sessions.max", "metrics"]
        );
        assert!(!diff.nat && !diff.alg, "{diff:?}");
        let dataplane = config("[dataplane]\nhook = \"tc\"");
        assert_eq!(old.diff(&dataplane).restart, [RestartPart::Dataplane]);
        let socket = config("[management]\nsocket = \"/run/other.sock\"");
        assert_eq!(old.diff(&socket).restart, [RestartPart::Management]);
        let ha = config("[ha]\nnode_id = 1\npeer = \"192.0.2.2\"");
        assert_eq!(old.diff(&ha).restart, [RestartPart::Ha]);
    }

    #[test]
    fn publishes_are_removed_and_added_one_by_one() {
        let old = config("");
        let new = parse(&format!(
            "{}\n[[publish]]\npublic = \"203.0.113.1:80\"\nprivate = \"10.0.0.3:80\"\nprotocol = \"tcp\"",
            BASE.replace("10.0.0.2:21", "10.0.0.4:21")
        ));
        let diff = old.diff(&new);
        assert!(diff.restart.is_empty());
        assert_eq!(diff.unpublished, old.publish);
        assert_eq!(diff.published, new.publish);
        // The publishes are the ALG's too; the fast path's NAT settings are not theirs.
        assert!(diff.alg && !diff.nat, "{diff:?}");
        assert_eq!(new.diff(&old).published, old.publish);
    }

    #[test]
    fn hot_changes_say_what_they_touch() {
        let old = config("");
        let timeouts = old.diff(&config("[timeouts]\nudp = 600"));
        assert!(timeouts.nat && timeouts.alg, "{timeouts:?}");
        let ports = old.diff(&config("[ftp]\ncontrol_ports = [21, 2121]"));
        assert!(ports.nat && ports.alg, "{ports:?}");
        let policy = old.diff(&config("[ftp.policy]\nanonymous = false"));
        assert!(policy.alg && !policy.nat, "{policy:?}");
        let sweep = old.diff(&config("[sessions]\nsweep_interval = 30"));
        assert_eq!(sweep.sweep_interval, Some(30));
        assert!(!sweep.alg && !sweep.nat && sweep.restart.is_empty());
        let priority = config("[ftp]\nrealtime_priority = 10");
        let faster = old.diff(&priority);
        assert_eq!(faster.realtime_priority, Some(Some(10)));
        assert!(faster.alg, "[ftp] changed");
        assert_eq!(priority.diff(&old).realtime_priority, Some(None));
        assert!(!faster.is_empty() && old.diff(&old).realtime_priority.is_none());
        let polling = config("[ftp]\ncpu_wakeup_latency_us = 0");
        assert_eq!(old.diff(&polling).cpu_wakeup_latency_us, Some(Some(0)));
        assert_eq!(polling.diff(&old).cpu_wakeup_latency_us, Some(None));
        assert!(old.diff(&old).cpu_wakeup_latency_us.is_none());
    }
}

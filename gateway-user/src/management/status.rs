//! `gateway status`: what the running agent reports, as fields (`--json` prints them), and
//! the text an operator reads, written from those fields.

use std::{fmt, net::Ipv4Addr};

use gateway_ftp::policy::{TlsPolicy, ViolationAction};
use serde::{Deserialize, Serialize};

use crate::config::Filtering;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub config: String,
    pub uptime_seconds: u64,
    pub interfaces: Vec<InterfaceStatus>,
    pub programs: Vec<(String, u32)>,
    pub sessions: usize,
    pub ftp_sessions: usize,
    pub expectations: usize,
    pub publishes: usize,
    /// How FTP control packets reach the agent now.
    pub punt: PuntStatus,
    pub masquerade: Option<MasqueradeStatus>,
    /// `[ftp.policy]`, summed up.
    pub policy: PolicyStatus,
    /// The sysctls the fast path needs on its interfaces, as they are now.
    #[serde(default)]
    pub sysctls: SysctlsStatus,
    /// `[ha]`: this node's role in its pair; `None` for a single gateway.
    #[serde(default)]
    pub ha: Option<HaStatus>,
}

/// A node of an active/standby pair: its role as keepalived last said, and its promotions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaStatus {
    pub node_id: u8,
    /// The peer's state-sync address and port (`[ha]`).
    pub peer: String,
    pub role: crate::ha::Role,
    /// When the role last changed (or the agent started), in seconds since the Unix epoch.
    pub since_unix_seconds: u64,
    /// Seconds in this role.
    pub for_seconds: u64,
    /// Role changes since the start.
    pub transitions: u64,
    /// Whether the programs are attached (master) on both interfaces.
    pub attached: bool,
    pub promotions: u64,
    /// How long the last promotion took, from the `master` request to programs attached.
    pub last_promotion_ms: Option<f64>,
    /// The state sync (`[ha] key_file`); `None`: not configured.
    #[serde(default)]
    pub sync: Option<crate::ha::sync::SyncStatus>,
}

impl fmt::Display for HaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {} {} for {}s ({} transitions), programs {}, peer {}",
            self.node_id,
            self.role,
            self.for_seconds,
            self.transitions,
            if self.attached {
                "attached"
            } else {
                "detached"
            },
            self.peer
        )?;
        if let Some(took) = self.last_promotion_ms {
            write!(
                f,
                ", last promotion attached in {took:.1} ms ({} in all)",
                self.promotions
            )?;
        }
        match &self.sync {
            None => write!(f, ", no state sync (no key_file)"),
            Some(sync) => {
                let counters = &sync.counters;
                write!(
                    f,
                    "\n            sync {}{}: lag {} frames, sent {} frames ({} records, {} snapshots), applied {} frames ({} records, {} snapshots), dropped {}, resyncs {}, refused {}, promotions without the peer's state {}",
                    sync.link,
                    if sync.in_sync { " (in sync)" } else { "" },
                    sync.lag_frames,
                    counters.frames_sent,
                    counters.records_sent,
                    counters.snapshots_sent,
                    counters.frames_applied,
                    counters.records_applied,
                    counters.snapshots_applied,
                    counters.frames_dropped,
                    counters.resyncs,
                    counters.refused,
                    counters.promotions_unsynced
                )?;
                write!(
                    f,
                    "\n            ftp sessions: sent {} records ({} snapshots, {} unacked, {} dropped), applied {} records, {} held",
                    counters.alg_records_sent,
                    counters.alg_snapshots_sent,
                    sync.alg_unacked_records,
                    counters.alg_records_dropped,
                    counters.alg_records_applied,
                    sync.alg_sessions_held
                )
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub role: String,
    pub name: String,
    pub ifindex: u32,
    /// The hook the fast path is attached with; `None` while the interface is gone.
    pub hook: Option<String>,
}

/// The transport FTP control packets take to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "transport", rename_all = "snake_case")]
pub enum PuntStatus {
    /// TC punts to the agent's tap; XDP, and TC when the tap cannot take a packet, to the ring.
    Tap { name: String, ifindex: u32 },
    /// Everything goes through the punt ring.
    Ring,
}

/// `[masquerade]` as the fast path applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasqueradeStatus {
    /// Inside prefixes such as `10.0.0.0/24`.
    pub networks: Vec<String>,
    pub addresses: Vec<Ipv4Addr>,
    pub first_port: u16,
    pub last_port: u16,
    pub filtering: Filtering,
}

/// The global FTP policy: its actions and switches, and how long its lists are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub on_violation: ViolationAction,
    pub tls: TlsPolicy,
    pub anonymous: bool,
    pub pipelining: bool,
    /// How many commands are denied.
    pub deny_commands: usize,
    /// How many user patterns are allowed, and denied.
    pub allow_users: usize,
    pub deny_users: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SysctlsStatus {
    /// `[dataplane] manage_sysctls`: the agent sets wrong values while it runs (and puts
    /// them back), or only checks them.
    pub managed: bool,
    /// Where the agent records the values it found before it changed them.
    pub record: String,
    pub settings: Vec<crate::sysctl::SysctlStatus>,
}

impl fmt::Display for PuntStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PuntStatus::Tap { name, ifindex } => write!(
                f,
                "tap {name} (ifindex {ifindex}) for TC, ring for XDP and as fallback"
            ),
            PuntStatus::Ring => f.write_str("ring"),
        }
    }
}

impl fmt::Display for MasqueradeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addresses: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        write!(
            f,
            "{} behind {} ports {}-{}",
            self.networks.join(","),
            addresses.join(","),
            self.first_port,
            self.last_port
        )
    }
}

impl fmt::Display for PolicyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "on_violation={} tls={} anonymous={} pipelining={} deny_commands={} allow_users={} deny_users={}",
            format!("{:?}", self.on_violation).to_lowercase(),
            format!("{:?}", self.tls).to_lowercase(),
            self.anonymous,
            self.pipelining,
            self.deny_commands,
            self.allow_users,
            self.deny_users
        )
    }
}

/// The text `gateway status` prints: one aligned line per fact.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "agent       pid {}, up {}s",
            self.pid, self.uptime_seconds
        )?;
        writeln!(f, "config      {}", self.config)?;
        for interface in &self.interfaces {
            writeln!(
                f,
                "{:<11} {} (ifindex {}) {}",
                interface.role,
                interface.name,
                interface.ifindex,
                interface.hook.as_deref().unwrap_or("gone")
            )?;
        }
        for (name, id) in &self.programs {
            writeln!(f, "program     {name} id {id}")?;
        }
        writeln!(f, "publishes   {}", self.publishes)?;
        writeln!(f, "punt        {}", self.punt)?;
        match &self.masquerade {
            Some(masquerade) => writeln!(f, "masquerade  {masquerade}")?,
            None => writeln!(f, "masquerade  none")?,
        }
        writeln!(f, "ftp policy  {}", self.policy)?;
        if let Some(ha) = &self.ha {
            writeln!(f, "ha          {ha}")?;
        }
        self.sysctls.fmt(f)?;
        writeln!(
            f,
            "now         {} session entries, {} ftp control sessions, {} expectations",
            self.sessions, self.ftp_sessions, self.expectations
        )
    }
}

/// One line per sysctl, then who manages them.
impl fmt::Display for SysctlsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for setting in &self.settings {
            let value = setting
                .value
                .map_or("unreadable".to_owned(), |value| value.to_string());
            let all = setting
                .all
                .map(|all| format!(", all {all}"))
                .unwrap_or_default();
            let verdict = if setting.ok {
                "ok".to_owned()
            } else {
                format!("WRONG: must be {}", setting.required)
            };
            let owed = match setting.original {
                Some(original) => format!(", was {original}: put back when the gateway stops"),
                None => String::new(),
            };
            writeln!(
                f,
                "sysctl      {} = {value} ({verdict}{all}{owed})",
                setting.name
            )?;
        }
        if self.managed {
            writeln!(
                f,
                "sysctls     set by the gateway while it runs; originals recorded in {}",
                self.record
            )
        } else if !self.settings.is_empty() {
            writeln!(f, "sysctls     checked only (manage_sysctls = false)")
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            pid: 7,
            config: "/etc/gateway.toml".into(),
            uptime_seconds: 3,
            interfaces: vec![
                InterfaceStatus {
                    role: "inside".into(),
                    name: "veth-in".into(),
                    ifindex: 4,
                    hook: Some("tc (tcx ingress)".into()),
                },
                InterfaceStatus {
                    role: "outside".into(),
                    name: "veth-out".into(),
                    ifindex: 5,
                    hook: None,
                },
            ],
            programs: vec![("gateway_tc".into(), 12)],
            sessions: 2,
            ftp_sessions: 1,
            expectations: 0,
            publishes: 1,
            punt: PuntStatus::Tap {
                name: "gwpunt0".into(),
                ifindex: 9,
            },
            masquerade: Some(MasqueradeStatus {
                networks: vec!["10.0.0.0/24".into(), "10.0.1.0/24".into()],
                addresses: vec![Ipv4Addr::new(203, 0, 113, 1)],
                first_port: 1024,
                last_port: 65535,
                filtering: Filtering::AddressDependent,
            }),
            policy: PolicyStatus {
                on_violation: ViolationAction::Reject,
                tls: TlsPolicy::Deny,
                anonymous: true,
                pipelining: false,
                deny_commands: 2,
                allow_users: 0,
                deny_users: 1,
            },
            sysctls: SysctlsStatus::default(),
            ha: None,
        }
    }

    #[test]
    fn the_text_is_written_from_the_fields() {
        let text = status().to_string();
        assert_eq!(
            text,
            "agent       pid 7, up 3s\n\
             config      /etc/gateway.toml\n\
             inside      veth-in (ifindex 4) tc (tcx ingress)\n\
             outside     veth-out (ifindex 5) gone\n\
             program     gateway_tc id 12\n\
             publishes   1\n\
             punt        tap gwpunt0 (ifindex 9) for TC, ring for XDP and as fallback\n\
             masquerade  10.0.0.0/24,10.0.1.0/24 behind 203.0.113.1 ports 1024-65535\n\
             ftp policy  on_violation=reject tls=deny anonymous=true pipelining=false deny_commands=2 allow_users=0 deny_users=1\n\
             now         2 session entries, 1 ftp control sessions, 0 expectations\n"
        );
    }

    #[test]
    fn json_carries_fields_and_reads_back() {
        let mut status = status();
        status.punt = PuntStatus::Ring;
        status.masquerade = None;
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["punt"], serde_json::json!({ "transport": "ring" }));
        assert_eq!(json["policy"]["deny_commands"], 2);
        assert_eq!(json["interfaces"][1]["hook"], serde_json::Value::Null);
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back.punt, PuntStatus::Ring);
        assert_eq!(back.policy, status.policy);
        assert!(
            back.to_string()
                .contains("punt        ring\nmasquerade  none\n")
        );
        assert_eq!(back.ha, None);
    }

    #[test]
    fn an_ha_node_shows_its_role_and_last_promotion() {
        let mut status = status();
        status.ha = Some(HaStatus {
            node_id: 2,
            peer: "192.0.2.1:7946".into(),
            role: crate::ha::Role::Master,
            since_unix_seconds: 1_700_000_000,
            for_seconds: 4,
            transitions: 1,
            attached: true,
            promotions: 1,
            last_promotion_ms: Some(2.54),
            sync: None,
        });
        assert!(status.to_string().contains(
            "ftp policy  on_violation=reject tls=deny anonymous=true pipelining=false deny_commands=2 allow_users=0 deny_users=1\n\
             ha          node 2 master for 4s (1 transitions), programs attached, peer 192.0.2.1:7946, last promotion attached in 2.5 ms (1 in all), no state sync (no key_file)\n"
        ), "{status}");
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["ha"]["role"], "master");
        assert_eq!(json["ha"]["last_promotion_ms"], 2.54);
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back.ha, status.ha);
    }
}

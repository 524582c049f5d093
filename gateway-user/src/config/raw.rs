//! The file's shape, as serde reads it. Kept apart from the validated types so that
//! validation has one place ([`super::Config::parse`]).

use std::path::PathBuf;

use serde::Deserialize;

pub(super) use super::ha::RawHa;
use super::{
    Alg, Filtering, Forwarding, Hook, Protocol, Punt, Timeouts, XdpMode, policy::RawPolicy,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) interfaces: RawInterfaces,
    #[serde(default)]
    pub(super) dataplane: RawDataplane,
    #[serde(default)]
    pub(super) publish: Vec<RawPublish>,
    pub(super) masquerade: Option<RawMasquerade>,
    #[serde(default)]
    pub(super) timeouts: Timeouts,
    #[serde(default)]
    pub(super) sessions: RawSessions,
    pub(super) ftp: Option<RawFtp>,
    #[serde(default)]
    pub(super) management: RawManagement,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    pub(super) ha: Option<RawHa>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawManagement {
    #[serde(default = "default_socket")]
    pub(super) socket: PathBuf,
}

impl Default for RawManagement {
    fn default() -> Self {
        RawManagement {
            socket: default_socket(),
        }
    }
}

pub(super) fn default_socket() -> PathBuf {
    PathBuf::from(crate::management::DEFAULT_SOCKET)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFtp {
    pub(super) control_ports: Option<Vec<u16>>,
    #[serde(default = "default_expectation_timeout")]
    pub(super) expectation_timeout: u64,
    pub(super) policy: Option<RawPolicy>,
    pub(super) state_file: Option<PathBuf>,
    pub(super) realtime_priority: Option<i64>,
    #[serde(default = "default_forward_pure_acks")]
    pub(super) forward_pure_acks: bool,
    #[serde(default = "default_busy_poll_us")]
    pub(super) busy_poll_us: i64,
    pub(super) cpu_wakeup_latency_us: Option<i64>,
}

pub(super) fn default_forward_pure_acks() -> bool {
    true
}

pub(super) fn default_state_file() -> PathBuf {
    PathBuf::from("/run/gateway/ftp-state.json")
}

/// Off: measured on the reference machine (2 cores, `cargo xtask bench --ftp-only
/// --busy-poll-us N`, alternating), a 50 us window cost the agent about half as much CPU again
/// per FTP session and won neither sessions per second nor a 227's transit beyond the runs'
/// noise: on few cores the spin takes the CPU the peers and the kernel need. Hosts with cores
/// to spare can turn it on.
pub(super) fn default_busy_poll_us() -> i64 {
    0
}

pub(super) fn default_expectation_timeout() -> u64 {
    60
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMasquerade {
    pub(super) networks: Vec<String>,
    pub(super) addresses: Vec<String>,
    #[serde(default = "default_ports")]
    pub(super) ports: String,
    #[serde(default)]
    pub(super) filtering: Filtering,
}

pub(super) fn default_ports() -> String {
    "1024-65535".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSessions {
    #[serde(default = "default_max_sessions")]
    pub(super) max: u32,
    #[serde(default = "default_sweep_interval")]
    pub(super) sweep_interval: u64,
}

impl Default for RawSessions {
    fn default() -> Self {
        RawSessions {
            max: default_max_sessions(),
            sweep_interval: default_sweep_interval(),
        }
    }
}

pub(super) fn default_sweep_interval() -> u64 {
    10
}

pub(super) fn default_max_sessions() -> u32 {
    gateway_common::DEFAULT_MAX_SESSIONS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInterfaces {
    pub(super) inside: String,
    pub(super) outside: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataplane {
    #[serde(default)]
    pub(super) hook: Hook,
    pub(super) xdp_mode: Option<XdpMode>,
    #[serde(default)]
    pub(super) forwarding: Forwarding,
    pub(super) pin_path: Option<PathBuf>,
    pub(super) punt_ring_bytes: Option<u32>,
    #[serde(default)]
    pub(super) punt: Punt,
    pub(super) manage_sysctls: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPublish {
    pub(super) public: String,
    pub(super) private: String,
    pub(super) protocol: Protocol,
    pub(super) alg: Option<Alg>,
    pub(super) policy: Option<RawPolicy>,
}

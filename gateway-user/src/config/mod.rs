//! `gateway.toml`: parsing and validation.
//!
//! Parsing is strict (unknown keys are errors, so a typo never silently disables a rule) and
//! every error names the file, and where possible the line and the entry, in one line.

mod diff;
mod ha;
mod parse;
mod policy;
mod raw;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddrV4,
    path::{Path, PathBuf},
};

pub use diff::{ConfigDiff, RestartPart};
use gateway_common::{IPPROTO_TCP, IPPROTO_UDP};
pub use gateway_ftp::policy::{NotFtpAction, Policy, TlsPolicy, ViolationAction};
pub use ha::{DEFAULT_SYNC_PORT, Ha, MIN_SYNC_KEY_BYTES, SyncKey};
use parse::{line_column, parse_endpoint, parse_ftp, parse_masquerade};
use policy::apply_policy;
use raw::RawConfig;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}{location}: {message}")]
    Parse {
        path: PathBuf,
        /// ` line L, column C` when known.
        location: String,
        message: String,
    },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Which hook carries the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// TC on virtual devices (veth, ...), native XDP on NICs whose driver supports it.
    #[default]
    Auto,
    Xdp,
    Tc,
}

/// How an XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver, before an skb exists.
    Native,
    /// In the kernel's generic receive path, after the skb is built; works on any device.
    Generic,
}

/// How the programs hand FTP control packets to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Punt {
    /// Redirected to a TAP device the agent owns (`gwpunt<N>`), read as a socket (TC
    /// redirects the skb, XDP the frame through a devmap); the ring is the fallback.
    #[default]
    Tap,
    /// Copied into the punt ring buffer.
    Ring,
}

/// Who forwards translated packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// The programs look up the route and forward the packet themselves, past the stack: TC
    /// with `bpf_redirect_neigh`, XDP with a devmap redirect to an interface the gateway is
    /// attached to. Packets the stack must see (expiring TTLs, no neighbour entry yet for
    /// XDP, no route, oversized without DF) still go there; oversized ones with DF are
    /// answered with ICMP fragmentation-needed to their original sender.
    #[default]
    Bpf,
    /// Every translated packet continues into the stack, which routes it (and answers an
    /// oversized one with DF itself, addressed to its translated source).
    Kernel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Interfaces,
    pub dataplane: Dataplane,
    pub publish: Vec<Publish>,
    pub masquerade: Option<Masquerade>,
    pub timeouts: Timeouts,
    /// Capacity of the session table (entries; two per connection).
    pub max_sessions: u32,
    /// Seconds between two sweeps of expired sessions and mappings.
    pub sweep_interval: u64,
    pub ftp: Ftp,
    /// `[management] socket`: where the agent answers `gateway status`, `sessions`, ...
    pub management_socket: PathBuf,
    /// `[metrics] listen`: where the agent serves Prometheus metrics, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[ha]`: one node of an active/standby pair; `None`: a single gateway.
    pub ha: Option<Ha>,
}

/// The FTP ALG's settings (`[ftp]`); which published servers it serves is `Publish::alg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ftp {
    /// Control ports of outside servers whose masqueraded clients the ALG serves. Default
    /// `[21]` when a masquerade is configured.
    pub control_ports: Vec<u16>,
    /// Seconds an announced data connection may take to open.
    pub expectation_timeout: u64,
    /// `[ftp.policy]`: what control sessions may do (a publish may override it).
    pub policy: Policy,
    /// With `[dataplane] pin_path`: where the ALG keeps its control sessions' state, so that
    /// a restarted agent carries on with them.
    pub state_file: PathBuf,
    /// `SCHED_FIFO` priority (1-99) of the agent's thread; `None`: the ordinary scheduler.
    /// Every control packet waits in the punt ring until the agent runs: at a real-time
    /// priority a busy host's other tasks no longer stand in front of it.
    pub realtime_priority: Option<u8>,
    /// Whether the fast path forwards the pure ACKs of control connections itself (their
    /// numbers moved by the ALG's edits) instead of punting them to the agent.
    pub forward_pure_acks: bool,
    /// Microseconds the agent keeps polling for punts without sleeping after a batch, while
    /// they keep coming (each batch found opens a new window); 0: it sleeps at once.
    pub busy_poll_us: u64,
    /// The wake-up latency (microseconds) the agent asks of idle CPUs while it runs (the
    /// kernel's CPU latency QoS); `None`: it asks nothing. A punt wakes the agent: on a
    /// CPU that halted when idle, in a virtual machine, that wake-up is most of a punt's time.
    pub cpu_wakeup_latency_us: Option<u32>,
}

/// Application-level gateways a publish can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Alg {
    Ftp,
}

/// Source NAT of inside networks behind public addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    pub networks: Vec<Ipv4Net>,
    pub addresses: Vec<std::net::Ipv4Addr>,
    pub ports: std::ops::RangeInclusive<u16>,
    pub filtering: Filtering,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Hosts the inside endpoint has sent to may reach it, from any port (RFC 4787
    /// "address-dependent filtering").
    #[default]
    AddressDependent,
    /// Only the exact remote endpoints it has sent to.
    AddressAndPortDependent,
    /// Any outside host may reach a mapped endpoint.
    EndpointIndependent,
}

/// An IPv4 prefix such as 10.0.0.0/24 (`ipnet`'s; `mask()` is its `netmask()`).
pub use ipnet::Ipv4Net;

/// Idle timeouts in seconds. Defaults are the RFC minimums: established TCP 2 h 4 min and
/// transitory TCP 4 min (RFC 5382 REQ-5), UDP 5 min (RFC 4787 REQ-5 recommends; at least
/// 2 min), ICMP 60 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub tcp_established: u64,
    pub tcp_transitory: u64,
    pub udp: u64,
    pub icmp: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: 7440,
            tcp_transitory: 240,
            udp: 300,
            icmp: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interfaces {
    pub inside: String,
    pub outside: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataplane {
    pub hook: Hook,
    /// Forces an XDP attach mode; `None` lets the hook choice decide (native).
    pub xdp_mode: Option<XdpMode>,
    pub forwarding: Forwarding,
    /// A directory on a bpffs where maps and links are pinned, so the fast path outlives
    /// the agent and a new agent adopts it (restart and upgrade without losing sessions).
    pub pin_path: Option<PathBuf>,
    /// Bytes of the punt ring (FTP control packets on their way to the agent); `None`: 4 MiB.
    pub punt_ring_bytes: Option<u32>,
    /// TC's punt transport.
    pub punt: Punt,
    /// Whether the agent sets the sysctls the fast path needs on its interfaces while it
    /// runs (and puts them back), or only checks them and refuses to run when they are wrong.
    pub manage_sysctls: bool,
}

/// A server on the inside network, reachable from outside at `public`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub public: SocketAddrV4,
    pub private: SocketAddrV4,
    pub protocol: Protocol,
    /// `alg = "ftp"`: this is an FTP server's control port; its connections go through the
    /// ALG, which opens their data connections.
    pub alg: Option<Alg>,
    /// `[publish.policy]`: this server's policy, `[ftp.policy]` with its own keys over it.
    pub policy: Option<Policy>,
}

/// Linux's IFNAMSIZ less the terminating NUL.
const MAX_IFNAME: usize = 15;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            location: err
                .span()
                .map(|span| {
                    let (line, column) = line_column(text, span.start);
                    format!(" line {line}, column {column}")
                })
                .unwrap_or_default(),
            message: err.message().trim().lines().collect::<Vec<_>>().join("; "),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };

        for (role, name) in [
            ("inside", &raw.interfaces.inside),
            ("outside", &raw.interfaces.outside),
        ] {
            if name.is_empty() || name.len() > MAX_IFNAME || name.contains(['/', ' ', '\0']) {
                return Err(invalid(format!(
                    "interfaces.{role} = {name:?} is not a valid interface name (1 to {MAX_IFNAME} characters, no '/' or spaces)"
                )));
            }
        }
        if raw.interfaces.inside == raw.interfaces.outside {
            return Err(invalid(format!(
                "interfaces.inside and interfaces.outside are both {:?}; they must be two different interfaces",
                raw.interfaces.inside
            )));
        }
        if raw.dataplane.hook == Hook::Tc && raw.dataplane.xdp_mode.is_some() {
            return Err(invalid(
                "dataplane.xdp_mode is set but dataplane.hook is \"tc\"".into(),
            ));
        }

        let mut publish = Vec::with_capacity(raw.publish.len());
        let mut by_public = HashMap::new();
        let mut by_private = HashMap::new();
        for (index, entry) in raw.publish.iter().enumerate() {
            let number = index + 1;
            let public = parse_endpoint(&entry.public).map_err(|why| {
                invalid(format!(
                    "publish #{number}: public = {:?}: {why}",
                    entry.public
                ))
            })?;
            let private = parse_endpoint(&entry.private).map_err(|why| {
                invalid(format!(
                    "publish #{number}: private = {:?}: {why}",
                    entry.private
                ))
            })?;
            if let Some(first) = by_public.insert((public, entry.protocol), number) {
                return Err(invalid(format!(
                    "publish #{number} repeats public {public}/{} of publish #{first}",
                    entry.protocol
                )));
            }
            // Replies are matched by their private source, so two publishes cannot share one.
            if let Some(first) = by_private.insert((private, entry.protocol), number) {
                return Err(invalid(format!(
                    "publish #{number} repeats private {private}/{} of publish #{first}",
                    entry.protocol
                )));
            }
            if entry.alg.is_some() && entry.protocol != Protocol::Tcp {
                return Err(invalid(format!(
                    "publish #{number}: alg = \"ftp\" needs protocol = \"tcp\""
                )));
            }
            publish.push(Publish {
                public,
                private,
                protocol: entry.protocol,
                alg: entry.alg,
                policy: None,
            });
        }
        if publish.len() > gateway_common::MAX_PUBLISHED as usize {
            return Err(invalid(format!(
                "{} publish entries; the fast path holds at most {}",
                publish.len(),
                gateway_common::MAX_PUBLISHED
            )));
        }

        let masquerade = raw
            .masquerade
            .as_ref()
            .map(parse_masquerade)
            .transpose()
            .map_err(invalid)?;
        let timeouts = raw.timeouts;
        for (name, value) in [
            ("tcp_established", timeouts.tcp_established),
            ("tcp_transitory", timeouts.tcp_transitory),
            ("udp", timeouts.udp),
            ("icmp", timeouts.icmp),
        ] {
            if value == 0 {
                return Err(invalid(format!(
                    "timeouts.{name} must be at least 1 second"
                )));
            }
        }
        if raw.sessions.sweep_interval == 0 {
            return Err(invalid(
                "sessions.sweep_interval must be at least 1 second".into(),
            ));
        }
        if raw.sessions.max < 1024 {
            return Err(invalid(format!(
                "sessions.max = {} is below the minimum of 1024",
                raw.sessions.max
            )));
        }

        let ftp = parse_ftp(raw.ftp.as_ref(), masquerade.is_some()).map_err(invalid)?;
        for (index, (publish, entry)) in publish.iter_mut().zip(&raw.publish).enumerate() {
            if let Some(overrides) = &entry.policy {
                if publish.alg.is_none() {
                    return Err(invalid(format!(
                        "publish #{}: a policy needs alg = \"ftp\"",
                        index + 1
                    )));
                }
                publish.policy = Some(
                    apply_policy(
                        &ftp.policy,
                        overrides,
                        &format!("publish #{}: policy", index + 1),
                    )
                    .map_err(invalid)?,
                );
            }
        }

        if let Some(bytes) = raw.dataplane.punt_ring_bytes
            && (!bytes.is_power_of_two() || !(16 * 1024..=1 << 30).contains(&bytes))
        {
            return Err(invalid(format!(
                "dataplane.punt_ring_bytes = {bytes}: expected a power of two from 16384 to 1073741824"
            )));
        }
        if let Some(pin_path) = &raw.dataplane.pin_path
            && !pin_path.is_absolute()
        {
            return Err(invalid(format!(
                "dataplane.pin_path = {pin_path:?}: expected an absolute path (on a bpffs)"
            )));
        }
        if !raw.management.socket.is_absolute() {
            return Err(invalid(format!(
                "management.socket = {:?}: expected an absolute path",
                raw.management.socket
            )));
        }
        let metrics_listen = raw
            .metrics
            .listen
            .as_deref()
            .map(|text| {
                text.parse::<std::net::SocketAddr>().map_err(|_| {
                    invalid(format!(
                        "metrics.listen = {text:?}: expected an address and port such as \"127.0.0.1:9469\""
                    ))
                })
            })
            .transpose()?;

        let ha = raw
            .ha
            .as_ref()
            .map(ha::parse_ha)
            .transpose()
            .map_err(invalid)?;
        if ha.is_some() && raw.dataplane.pin_path.is_some() {
            return Err(invalid(
                "[ha] with dataplane.pin_path: not supported yet (a restarted node would adopt links attached while it is not master); remove one".into(),
            ));
        }

        Ok(Config {
            ha,
            management_socket: raw.management.socket,
            metrics_listen,
            ftp,
            masquerade,
            timeouts,
            max_sessions: raw.sessions.max,
            sweep_interval: raw.sessions.sweep_interval,
            interfaces: Interfaces {
                inside: raw.interfaces.inside,
                outside: raw.interfaces.outside,
            },
            dataplane: Dataplane {
                hook: raw.dataplane.hook,
                xdp_mode: raw.dataplane.xdp_mode,
                forwarding: raw.dataplane.forwarding,
                pin_path: raw.dataplane.pin_path,
                punt_ring_bytes: raw.dataplane.punt_ring_bytes,
                punt: raw.dataplane.punt,
                manage_sysctls: raw.dataplane.manage_sysctls.unwrap_or(true),
            },
            publish,
        })
    }
}

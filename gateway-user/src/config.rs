//! `gateway.toml`: parsing and validation.
//!
//! Parsing is strict (unknown keys are errors, so a typo never silently disables a rule) and
//! every error names the file, and where possible the line and the entry, in one line.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddrV4,
    path::{Path, PathBuf},
};

use gateway_common::{IPPROTO_TCP, IPPROTO_UDP};
pub use gateway_ftp::policy::{NotFtpAction, Policy, TlsPolicy, ViolationAction};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
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

/// One `masquerade.networks` entry. A prefix with host bits set is refused rather than
/// truncated as `ipnet` would: it most likely names a host where a network was meant.
fn parse_network(text: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = text.parse().map_err(|_| {
        "expected an IPv4 prefix, address/length with a length of 0 to 32, such as \"10.0.0.0/24\""
            .to_owned()
    })?;
    if net.addr() != net.network() {
        return Err(format!(
            "{text} has host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}

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

// The file's shape. Kept apart from the validated types so that validation has one place.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: RawInterfaces,
    #[serde(default)]
    dataplane: RawDataplane,
    #[serde(default)]
    publish: Vec<RawPublish>,
    masquerade: Option<RawMasquerade>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    sessions: RawSessions,
    ftp: Option<RawFtp>,
    #[serde(default)]
    management: RawManagement,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManagement {
    #[serde(default = "default_socket")]
    socket: PathBuf,
}

impl Default for RawManagement {
    fn default() -> Self {
        RawManagement {
            socket: default_socket(),
        }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from(crate::management::DEFAULT_SOCKET)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFtp {
    control_ports: Option<Vec<u16>>,
    #[serde(default = "default_expectation_timeout")]
    expectation_timeout: u64,
    policy: Option<RawPolicy>,
    state_file: Option<PathBuf>,
    realtime_priority: Option<i64>,
}

fn default_state_file() -> PathBuf {
    PathBuf::from("/run/gateway/ftp-state.json")
}

/// `[ftp.policy]` and `[publish.policy]`: every key optional, so a publish names only what
/// it changes.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    allow_users: Option<Vec<String>>,
    deny_users: Option<Vec<String>>,
    anonymous: Option<bool>,
    deny_commands: Option<Vec<String>>,
    max_line: Option<usize>,
    tls: Option<RawTls>,
    on_violation: Option<RawViolationAction>,
    pipelining: Option<bool>,
    not_ftp: Option<RawNotFtp>,
    max_malformed_lines: Option<usize>,
    max_pending_expectations: Option<usize>,
    max_sessions_per_client: Option<usize>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawTls {
    Deny,
    Pass,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawNotFtp {
    Reset,
    Pass,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawViolationAction {
    Drop,
    Reject,
    Reset,
}

fn default_expectation_timeout() -> u64 {
    60
}

/// `raw`'s keys over `base`, validated; `table` names the section in errors.
fn apply_policy(base: &Policy, raw: &RawPolicy, table: &str) -> Result<Policy, String> {
    let mut policy = base.clone();
    let globs = |key: &str, list: &Option<Vec<String>>| -> Result<Option<Vec<String>>, String> {
        match list {
            Some(list) if list.iter().any(|glob| glob.is_empty()) => Err(format!(
                "{table}.{key}: an empty pattern matches no user name"
            )),
            other => Ok(other.clone()),
        }
    };
    if let Some(list) = globs("allow_users", &raw.allow_users)? {
        policy.allow_users = list;
    }
    if let Some(list) = globs("deny_users", &raw.deny_users)? {
        policy.deny_users = list;
    }
    if let Some(anonymous) = raw.anonymous {
        policy.anonymous = anonymous;
    }
    if let Some(commands) = &raw.deny_commands {
        policy.deny_commands = commands
            .iter()
            .map(|verb| {
                if (3..=4).contains(&verb.len()) && verb.chars().all(|c| c.is_ascii_alphabetic()) {
                    Ok(verb.to_ascii_uppercase())
                } else {
                    Err(format!(
                        "{table}.deny_commands: {verb:?} is not an FTP command (3 or 4 letters)"
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(max_line) = raw.max_line {
        if !(128..=65536).contains(&max_line) {
            return Err(format!(
                "{table}.max_line = {max_line}: expected 128 to 65536 bytes"
            ));
        }
        policy.max_line = max_line;
    }
    if let Some(tls) = raw.tls {
        policy.tls = match tls {
            RawTls::Deny => TlsPolicy::Deny,
            RawTls::Pass => TlsPolicy::Pass,
        };
    }
    if let Some(action) = raw.on_violation {
        policy.on_violation = match action {
            RawViolationAction::Drop => ViolationAction::Drop,
            RawViolationAction::Reject => ViolationAction::Reject,
            RawViolationAction::Reset => ViolationAction::Reset,
        };
    }
    if let Some(pipelining) = raw.pipelining {
        policy.pipelining = pipelining;
    }
    if let Some(not_ftp) = raw.not_ftp {
        policy.not_ftp = match not_ftp {
            RawNotFtp::Reset => NotFtpAction::Reset,
            RawNotFtp::Pass => NotFtpAction::Pass,
        };
    }
    if let Some(lines) = raw.max_malformed_lines {
        if !(1..=1000).contains(&lines) {
            return Err(format!(
                "{table}.max_malformed_lines = {lines}: expected 1 to 1000"
            ));
        }
        policy.max_malformed_lines = lines;
    }
    // 0 sessions per client: no limit; 0 expectations would make passive mode impossible.
    for (key, value, slot, lowest) in [
        (
            "max_pending_expectations",
            raw.max_pending_expectations,
            &mut policy.max_pending_expectations,
            1,
        ),
        (
            "max_sessions_per_client",
            raw.max_sessions_per_client,
            &mut policy.max_sessions_per_client,
            0,
        ),
    ] {
        if let Some(value) = value {
            if !(lowest..=100_000).contains(&value) {
                let meaning = if lowest == 0 { " (0: no limit)" } else { "" };
                return Err(format!(
                    "{table}.{key} = {value}: expected {lowest} to 100000{meaning}"
                ));
            }
            *slot = value;
        }
    }
    Ok(policy)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMasquerade {
    networks: Vec<String>,
    addresses: Vec<String>,
    #[serde(default = "default_ports")]
    ports: String,
    #[serde(default)]
    filtering: Filtering,
}

fn default_ports() -> String {
    "1024-65535".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    #[serde(default = "default_max_sessions")]
    max: u32,
    #[serde(default = "default_sweep_interval")]
    sweep_interval: u64,
}

impl Default for RawSessions {
    fn default() -> Self {
        RawSessions {
            max: default_max_sessions(),
            sweep_interval: default_sweep_interval(),
        }
    }
}

fn default_sweep_interval() -> u64 {
    10
}

fn default_max_sessions() -> u32 {
    gateway_common::DEFAULT_MAX_SESSIONS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterfaces {
    inside: String,
    outside: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    #[serde(default)]
    hook: Hook,
    xdp_mode: Option<XdpMode>,
    #[serde(default)]
    forwarding: Forwarding,
    pin_path: Option<PathBuf>,
    punt_ring_bytes: Option<u32>,
    #[serde(default)]
    punt: Punt,
    manage_sysctls: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    public: String,
    private: String,
    protocol: Protocol,
    alg: Option<Alg>,
    policy: Option<RawPolicy>,
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

        Ok(Config {
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

fn parse_masquerade(raw: &RawMasquerade) -> Result<Masquerade, String> {
    use gateway_common::{MAX_MASQ_ADDRESSES, MAX_MASQ_NETWORKS};
    if raw.networks.is_empty() || raw.networks.len() > MAX_MASQ_NETWORKS {
        return Err(format!(
            "masquerade.networks needs 1 to {MAX_MASQ_NETWORKS} prefixes"
        ));
    }
    if raw.addresses.is_empty() || raw.addresses.len() > MAX_MASQ_ADDRESSES {
        return Err(format!(
            "masquerade.addresses needs 1 to {MAX_MASQ_ADDRESSES} addresses"
        ));
    }
    let networks = raw
        .networks
        .iter()
        .map(|text| {
            parse_network(text).map_err(|why| format!("masquerade.networks: {text:?}: {why}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let addresses = raw
        .addresses
        .iter()
        .map(|text| {
            text.parse::<std::net::Ipv4Addr>()
                .map_err(|_| format!("masquerade.addresses: {text:?} is not an IPv4 address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (low, high) = raw
        .ports
        .split_once('-')
        .and_then(|(low, high)| {
            Some((
                low.trim().parse::<u16>().ok()?,
                high.trim().parse::<u16>().ok()?,
            ))
        })
        .filter(|(low, high)| *low >= 1 && low <= high)
        .ok_or(format!(
            "masquerade.ports = {:?}: expected a range such as \"1024-65535\"",
            raw.ports
        ))?;
    Ok(Masquerade {
        networks,
        addresses,
        ports: low..=high,
        filtering: raw.filtering,
    })
}

fn parse_ftp(raw: Option<&RawFtp>, masquerade: bool) -> Result<Ftp, String> {
    let default_ports = if masquerade { vec![21] } else { Vec::new() };
    let Some(raw) = raw else {
        return Ok(Ftp {
            control_ports: default_ports,
            expectation_timeout: default_expectation_timeout(),
            policy: Policy::default(),
            state_file: default_state_file(),
            realtime_priority: None,
        });
    };
    let policy = match &raw.policy {
        Some(policy) => apply_policy(&Policy::default(), policy, "ftp.policy")?,
        None => Policy::default(),
    };
    let control_ports = match &raw.control_ports {
        None => default_ports,
        Some(ports) => {
            if !ports.is_empty() && !masquerade {
                return Err(
                    "ftp.control_ports serves masqueraded clients, but there is no [masquerade]"
                        .into(),
                );
            }
            if ports.len() > gateway_common::MAX_FTP_CONTROL_PORTS {
                return Err(format!(
                    "ftp.control_ports names {} ports; at most {}",
                    ports.len(),
                    gateway_common::MAX_FTP_CONTROL_PORTS
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for port in ports {
                if *port == 0 {
                    return Err("ftp.control_ports: port 0 is not a port".into());
                }
                if !seen.insert(*port) {
                    return Err(format!("ftp.control_ports names {port} twice"));
                }
            }
            ports.clone()
        }
    };
    if !(1..=3600).contains(&raw.expectation_timeout) {
        return Err(format!(
            "ftp.expectation_timeout = {}: expected 1 to 3600 seconds",
            raw.expectation_timeout
        ));
    }
    let state_file = raw.state_file.clone().unwrap_or_else(default_state_file);
    if !state_file.is_absolute() {
        return Err(format!(
            "ftp.state_file = {state_file:?}: expected an absolute path"
        ));
    }
    let realtime_priority = match raw.realtime_priority {
        None => None,
        Some(priority @ 1..=99) => Some(priority as u8),
        Some(other) => {
            return Err(format!(
                "ftp.realtime_priority = {other}: expected a SCHED_FIFO priority from 1 to 99"
            ));
        }
    };
    Ok(Ftp {
        control_ports,
        expectation_timeout: raw.expectation_timeout,
        policy,
        state_file,
        realtime_priority,
    })
}

fn parse_endpoint(text: &str) -> Result<SocketAddrV4, &'static str> {
    let socket: SocketAddrV4 = text
        .parse()
        .map_err(|_| "not an IPv4 address and port such as \"203.0.113.1:21\"")?;
    if socket.port() == 0 {
        return Err("port 0 cannot be published");
    }
    let ip = socket.ip();
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err("not a unicast address");
    }
    Ok(socket)
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |newline| before.len() - newline - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [interfaces]
        inside = "veth-in"
        outside = "veth-out"

        [dataplane]
        hook = "auto"

        [[publish]]
        public = "203.0.113.1:21"
        private = "10.0.0.2:21"
        protocol = "tcp"
    "#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("gateway.toml"))
    }

    fn error(text: &str) -> String {
        let message = parse(text)
            .expect_err("config should be refused")
            .to_string();
        assert!(!message.contains('\n'), "error must be one line: {message}");
        message
    }

    #[test]
    fn the_documented_example_parses() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.interfaces.inside, "veth-in");
        assert_eq!(config.dataplane.hook, Hook::Auto);
        assert_eq!(
            config.publish,
            vec![Publish {
                public: "203.0.113.1:21".parse().unwrap(),
                private: "10.0.0.2:21".parse().unwrap(),
                protocol: Protocol::Tcp,
                alg: None,
                policy: None,
            }]
        );
        // No masquerade: no outside control ports to watch.
        assert!(config.ftp.control_ports.is_empty());
        assert_eq!(config.ftp.expectation_timeout, 60);
    }

    const MASQUERADE: &str =
        "\n[masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"203.0.113.1\"]\n";

    #[test]
    fn the_repositorys_example_config_parses() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway.toml"));
        let config = Config::load(path).unwrap();
        assert_eq!(config.publish.len(), 2);
        assert_eq!(config.publish[1].alg, Some(Alg::Ftp));
        assert_eq!(config.ftp.control_ports, vec![21]);
    }

    #[test]
    fn the_packaged_example_config_parses() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/gateway.toml"
        ));
        let config = Config::load(path).unwrap();
        assert_eq!(config.interfaces.outside, "eth0");
        assert_eq!(config.management_socket, Path::new("/run/gateway.sock"));
        assert_eq!(config.ftp.policy.on_violation, ViolationAction::Reject);
    }

    #[test]
    fn sysctls_are_managed_unless_told_not_to() {
        assert!(parse(GOOD).unwrap().dataplane.manage_sysctls);
        let text = GOOD.replace("hook = \"auto\"", "hook = \"auto\"\nmanage_sysctls = false");
        assert!(!parse(&text).unwrap().dataplane.manage_sysctls);
        let refused = error(&text.replace("= false", "= \"no\""));
        assert!(
            refused.contains("line 8") && refused.contains("boolean"),
            "{refused}"
        );
    }

    #[test]
    fn management_and_metrics_settings() {
        let text = format!(
            "{GOOD}\n[management]\nsocket = \"/run/gw/api.sock\"\n[metrics]\nlisten = \"127.0.0.1:9469\"\n"
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.management_socket, Path::new("/run/gw/api.sock"));
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9469".parse().unwrap())
        );
        assert!(error(&text.replace("/run/gw/api.sock", "api.sock")).contains("absolute path"));
        assert!(error(&text.replace("127.0.0.1:9469", "localhost")).contains("metrics.listen"));
    }

    #[test]
    fn ftp_alg_settings() {
        let with_alg = GOOD.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nalg = \"ftp\"");
        assert_eq!(parse(&with_alg).unwrap().publish[0].alg, Some(Alg::Ftp));
        let udp = with_alg.replace("protocol = \"tcp\"", "protocol = \"udp\"");
        assert!(error(&udp).contains("alg = \"ftp\" needs protocol = \"tcp\""));
        assert!(error(&with_alg.replace("\"ftp\"", "\"sip\"")).contains("unknown variant `sip`"));

        // With a masquerade the ALG watches port 21 unless told otherwise.
        let masq = format!("{GOOD}{MASQUERADE}");
        assert_eq!(parse(&masq).unwrap().ftp.control_ports, vec![21]);
        let ports =
            format!("{masq}\n[ftp]\ncontrol_ports = [21, 2121]\nexpectation_timeout = 30\n");
        let ftp = parse(&ports).unwrap().ftp;
        assert_eq!(
            (ftp.control_ports, ftp.expectation_timeout),
            (vec![21, 2121], 30)
        );
        let off = format!("{masq}\n[ftp]\ncontrol_ports = []\n");
        assert!(parse(&off).unwrap().ftp.control_ports.is_empty());

        assert_eq!(parse(GOOD).unwrap().ftp.realtime_priority, None);
        let realtime = format!("{GOOD}\n[ftp]\nrealtime_priority = 10\n");
        assert_eq!(parse(&realtime).unwrap().ftp.realtime_priority, Some(10));
        for wrong in ["0", "100", "-1"] {
            let text = realtime.replace("= 10", &format!("= {wrong}"));
            assert!(error(&text).contains("ftp.realtime_priority"), "{wrong}");
        }

        let orphan = format!("{GOOD}\n[ftp]\ncontrol_ports = [21]\n");
        assert!(error(&orphan).contains("there is no [masquerade]"));
        let twice = format!("{masq}\n[ftp]\ncontrol_ports = [21, 21]\n");
        assert!(error(&twice).contains("names 21 twice"));
        let zero = format!("{masq}\n[ftp]\nexpectation_timeout = 0\n");
        assert!(error(&zero).contains("ftp.expectation_timeout = 0"));
        let short = format!("{masq}\n[ftp.policy]\nmax_line = 10\n");
        assert!(error(&short).contains("ftp.policy.max_line = 10"));
    }

    #[test]
    fn policies_global_and_per_publish() {
        let text = format!(
            "{}\nalg = \"ftp\"\n[publish.policy]\nanonymous = false\ndeny_commands = [\"dele\"]\n\n[ftp.policy]\non_violation = \"reset\"\ndeny_users = [\"root\", \"adm*\"]\ntls = \"pass\"\n",
            GOOD.trim_end()
        );
        let config = parse(&text).unwrap();
        let global = &config.ftp.policy;
        assert_eq!(global.on_violation, ViolationAction::Reset);
        assert_eq!(global.tls, TlsPolicy::Pass);
        assert!(global.anonymous);
        let server = config.publish[0].policy.as_ref().unwrap();
        assert!(!server.anonymous, "the publish's own key");
        assert_eq!(server.deny_commands, vec!["DELE"]);
        assert_eq!(server.on_violation, ViolationAction::Reset, "inherited");
        assert_eq!(server.deny_users.len(), 2);

        let bad = text.replace("\"dele\"", "\"DELETE\"");
        assert!(error(&bad).contains("publish #1: policy.deny_commands: \"DELETE\""));
        let bad = text.replace("\"reset\"", "\"explode\"");
        assert!(error(&bad).contains("unknown variant `explode`"));
        let no_alg = text.replace("alg = \"ftp\"\n", "");
        assert!(error(&no_alg).contains("publish #1: a policy needs alg = \"ftp\""));

        // Sessions per client: thousands by default (shared addresses), 0 for no limit.
        assert_eq!(global.max_sessions_per_client, 4096);
        assert_eq!(global.session_limit(), Some(4096));
        let unlimited = parse(&format!("{text}max_sessions_per_client = 0\n")).unwrap();
        assert_eq!(unlimited.ftp.policy.session_limit(), None);
        assert!(
            error(&format!("{text}max_sessions_per_client = 100001\n")).contains(
                "ftp.policy.max_sessions_per_client = 100001: expected 0 to 100000 (0: no limit)"
            )
        );
        assert!(
            error(&format!("{text}max_pending_expectations = 0\n"))
                .contains("max_pending_expectations = 0: expected 1 to 100000")
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let message = error(&GOOD.replace("hook = \"auto\"", "hook = \"auto\"\nmode = \"fast\""));
        assert!(message.contains("unknown field `mode`"), "{message}");
        assert!(message.contains("line 8"), "{message}");
    }

    #[test]
    fn bad_address_is_named() {
        let message = error(&GOOD.replace("10.0.0.2:21", "10.0.0.300:21"));
        assert!(
            message.contains("publish #1: private = \"10.0.0.300:21\""),
            "{message}"
        );
    }

    #[test]
    fn duplicate_publish_is_refused() {
        let twice = format!(
            "{GOOD}\n[[publish]]\npublic = \"203.0.113.1:21\"\nprivate = \"10.0.0.3:21\"\nprotocol = \"tcp\"\n"
        );
        assert!(
            error(&twice).contains("publish #2 repeats public 203.0.113.1:21/tcp of publish #1")
        );
        // The same public endpoint under the other protocol is a different publish.
        let udp = twice.replace(
            "10.0.0.3:21\"\nprotocol = \"tcp\"",
            "10.0.0.3:21\"\nprotocol = \"udp\"",
        );
        assert_eq!(parse(&udp).unwrap().publish.len(), 2);
    }

    #[test]
    fn missing_interface_is_named() {
        let message = error(&GOOD.replace("outside = \"veth-out\"\n", ""));
        assert!(message.contains("missing field `outside`"), "{message}");
    }

    #[test]
    fn masquerade_and_timeouts() {
        let text = format!(
            "{GOOD}\n[masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"203.0.113.1\"]\n\n[timeouts]\nudp = 120\n"
        );
        let config = parse(&text).unwrap();
        let masquerade = config.masquerade.unwrap();
        assert_eq!(masquerade.networks[0].to_string(), "10.0.0.0/24");
        assert_eq!(
            masquerade.networks[0].netmask(),
            std::net::Ipv4Addr::new(255, 255, 255, 0)
        );
        assert_eq!(masquerade.ports, 1024..=65535);
        assert_eq!(masquerade.filtering, Filtering::AddressDependent);
        assert_eq!(
            config.timeouts,
            Timeouts {
                udp: 120,
                ..Timeouts::default()
            }
        );
        assert_eq!(config.max_sessions, gateway_common::DEFAULT_MAX_SESSIONS);
        assert_eq!(config.sweep_interval, 10);
        let no_sweep = format!("{text}\n[sessions]\nsweep_interval = 0\n");
        assert!(error(&no_sweep).contains("sessions.sweep_interval"));
        assert!(error(&text.replace("10.0.0.0/24", "10.0.0.1/24")).contains("host bits set"));
        assert!(error(&text.replace("10.0.0.0/24", "10.0.0.0/33")).contains("prefix"));
        assert!(error(&text.replace("udp = 120", "udp = 0")).contains("timeouts.udp"));
        let ports = text.replace(
            "addresses = [\"203.0.113.1\"]",
            "addresses = [\"203.0.113.1\"]\nports = \"2000-1000\"",
        );
        assert!(error(&ports).contains("masquerade.ports"));
        assert!(error(&text.replace("10.0.0.0/24", "10.0.0.0")).contains("address/length"));
        assert!(error(&text.replace("10.0.0.0/24", "10.0.0.x/24")).contains("IPv4 prefix"));
        let everything = parse(&text.replace("10.0.0.0/24", "0.0.0.0/0")).unwrap();
        assert_eq!(
            everything.masquerade.unwrap().networks[0].netmask(),
            std::net::Ipv4Addr::UNSPECIFIED
        );
    }

    #[test]
    fn bad_enum_values_and_names_are_refused() {
        assert!(error(&GOOD.replace("\"auto\"", "\"ebpf\"")).contains("unknown variant `ebpf`"));
        assert!(error(&GOOD.replace("\"tcp\"", "\"sctp\"")).contains("unknown variant `sctp`"));
        assert!(
            error(&GOOD.replace("\"veth-out\"", "\"veth-in\""))
                .contains("two different interfaces")
        );
        assert!(
            error(&GOOD.replace("\"veth-out\"", "\"a-name-much-too-long\""))
                .contains("not a valid interface name")
        );
        assert!(error(&GOOD.replace("203.0.113.1:21", "203.0.113.1:0")).contains("port 0"));
        assert!(
            error(&GOOD.replace("hook = \"auto\"", "hook = \"tc\"\nxdp_mode = \"native\""))
                .contains("xdp_mode")
        );
    }
}

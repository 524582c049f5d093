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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interfaces {
    pub inside: String,
    pub outside: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dataplane {
    pub hook: Hook,
    /// Forces an XDP attach mode; `None` lets the hook choice decide (native).
    pub xdp_mode: Option<XdpMode>,
}

/// A server on the inside network, reachable from outside at `public`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    pub public: SocketAddrV4,
    pub private: SocketAddrV4,
    pub protocol: Protocol,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    public: String,
    private: String,
    protocol: Protocol,
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
            publish.push(Publish {
                public,
                private,
                protocol: entry.protocol,
            });
        }
        if publish.len() > gateway_common::MAX_PUBLISHED as usize {
            return Err(invalid(format!(
                "{} publish entries; the fast path holds at most {}",
                publish.len(),
                gateway_common::MAX_PUBLISHED
            )));
        }

        Ok(Config {
            interfaces: Interfaces {
                inside: raw.interfaces.inside,
                outside: raw.interfaces.outside,
            },
            dataplane: Dataplane {
                hook: raw.dataplane.hook,
                xdp_mode: raw.dataplane.xdp_mode,
            },
            publish,
        })
    }
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
            }]
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

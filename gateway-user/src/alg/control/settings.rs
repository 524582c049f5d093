//! The ALG's view of the configuration, and which policy a control session follows.

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    ops::RangeInclusive,
    sync::Arc,
};

use gateway_ftp::policy::Policy;

use crate::config::Ipv4Net;

/// The ALG's view of the configuration.
#[derive(Debug, Clone)]
pub struct AlgSettings {
    /// Published FTP control endpoints: public -> private.
    pub published: HashMap<SocketAddrV4, SocketAddrV4>,
    /// Every published TCP public endpoint (FTP or not): never handed out as a data port.
    pub reserved: HashSet<SocketAddrV4>,
    pub masquerade: Option<MasqueradeSettings>,
    /// Public ports for data connections announced by published servers when the server's
    /// own port is taken (the masquerade's range when there is one).
    pub data_ports: RangeInclusive<u16>,
    pub expectation_timeout_ns: u64,
    /// `[ftp.policy]`: masqueraded clients' sessions, and published servers without their own.
    pub policy: Arc<Policy>,
    /// Published servers' own policies, by public control endpoint.
    pub published_policies: HashMap<SocketAddrV4, Arc<Policy>>,
    pub established_timeout_ns: u64,
    pub transitory_timeout_ns: u64,
    /// `[ftp] forward_pure_acks`: the fast path forwards what it can of the pure ACKs.
    pub forward_pure_acks: bool,
}

impl AlgSettings {
    pub fn from_config(config: &crate::config::Config) -> AlgSettings {
        let tcp =
            |publish: &&crate::config::Publish| publish.protocol == crate::config::Protocol::Tcp;
        let seconds = |s: u64| s.saturating_mul(1_000_000_000);
        let masquerade = config
            .masquerade
            .as_ref()
            .map(|masquerade| MasqueradeSettings {
                networks: masquerade.networks.clone(),
                addresses: masquerade.addresses.clone(),
                ports: masquerade.ports.clone(),
            });
        AlgSettings {
            published: config
                .publish
                .iter()
                .filter(tcp)
                .filter(|publish| publish.alg.is_some())
                .map(|publish| (publish.public, publish.private))
                .collect(),
            reserved: config
                .publish
                .iter()
                .filter(tcp)
                .map(|publish| publish.public)
                .collect(),
            data_ports: masquerade
                .as_ref()
                .map_or(1024..=65535, |masquerade| masquerade.ports.clone()),
            masquerade,
            expectation_timeout_ns: seconds(config.ftp.expectation_timeout),
            policy: Arc::new(config.ftp.policy.clone()),
            published_policies: config
                .publish
                .iter()
                .filter_map(|publish| Some((publish.public, Arc::new(publish.policy.clone()?))))
                .collect(),
            established_timeout_ns: seconds(config.timeouts.tcp_established),
            transitory_timeout_ns: seconds(config.timeouts.tcp_transitory),
            forward_pure_acks: config.ftp.forward_pure_acks,
        }
    }
}

impl AlgSettings {
    /// The policy of a control session to `server_seen`: the published server's own, else
    /// `[ftp.policy]`. Chosen at the SYN, again at a reload and at a restore: it is never
    /// saved with the session.
    pub fn policy_for(&self, server_seen: SocketAddrV4) -> Arc<Policy> {
        self.published_policies
            .get(&server_seen)
            .unwrap_or(&self.policy)
            .clone()
    }
}

#[derive(Debug, Clone)]
pub struct MasqueradeSettings {
    pub networks: Vec<Ipv4Net>,
    pub addresses: Vec<Ipv4Addr>,
    pub ports: RangeInclusive<u16>,
}

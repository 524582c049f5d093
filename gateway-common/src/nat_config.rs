//! The masquerade and timeout settings the agent writes into `NAT_CONFIG`, and the
//! address-dependent filtering they select.

use crate::{Endpoint, IPPROTO_TCP, IPPROTO_UDP, session_state, tcp};

/// Networks and public addresses a masquerade rule can name.
pub const MAX_MASQ_NETWORKS: usize = 8;
pub const MAX_MASQ_ADDRESSES: usize = 8;
/// Free-port probes per new mapping before the pool counts as exhausted (Cilium's nat.h does
/// the same: the original port, then bounded random retries).
pub const PORT_ALLOCATION_TRIES: u32 = 16;

wire_enum! {
    /// `NatConfig::filtering`: who may send to a mapped public endpoint with no session yet
    /// (RFC 4787 section 5).
    pub enum Filtering: u32 {
        /// Any host the inside endpoint has sent to, from any of its ports.
        AddressDependent = 0,
        /// Only the exact remote endpoints the inside endpoint has sent to.
        AddressAndPortDependent = 1,
        /// Any outside host.
        EndpointIndependent = 2,
    }
}

/// A remote host a mapped public endpoint has sent to: the key of `MASQ_PEERS`, for
/// address-dependent filtering.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PeerKey {
    pub public: Endpoint,
    pub remote: [u8; 4],
}

#[cfg(feature = "user")]
// SAFETY: repr(C), two byte-array structs, no implicit padding.
unsafe impl aya::Pod for PeerKey {}

/// An IPv4 prefix, network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ipv4Cidr {
    pub addr: [u8; 4],
    pub mask: [u8; 4],
}

impl Ipv4Cidr {
    #[inline(always)]
    pub fn contains(&self, addr: [u8; 4]) -> bool {
        u32::from_ne_bytes(addr) & u32::from_ne_bytes(self.mask) == u32::from_ne_bytes(self.addr)
    }
}

/// FTP control ports a config can name for masqueraded clients (`[ftp] control_ports`).
pub const MAX_FTP_CONTROL_PORTS: usize = 8;

/// Masquerade and timeout settings, element 0 of the `NAT_CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatConfig {
    /// Inside networks whose outgoing traffic is masqueraded.
    pub networks: [Ipv4Cidr; MAX_MASQ_NETWORKS],
    /// Public addresses the masquerade uses; a private address always gets the same one.
    pub addresses: [[u8; 4]; MAX_MASQ_ADDRESSES],
    pub network_count: u32,
    pub address_count: u32,
    /// Public port (and ICMP identifier) range, host order, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    /// A [`Filtering`].
    pub filtering: u32,
    /// Non-zero: the programs forward translated packets themselves (FIB lookup, then
    /// `bpf_redirect_neigh` from TC, a devmap redirect from XDP) instead of handing them to
    /// the stack.
    pub bpf_forwarding: u32,
    /// Interface roles (ifindex; 0 = not set): new masqueraded connections only come in on
    /// the inside one, unsolicited traffic is only judged on the outside one, and a packet
    /// arriving outside with an inside network's source address is a spoof.
    pub inside_ifindex: u32,
    pub outside_ifindex: u32,
    /// FTP control ports (network order) of outside servers: masqueraded connections to
    /// them, and their replies, go to the agent's ALG (first `ftp_control_port_count`).
    pub ftp_control_port_count: u32,
    pub ftp_control_ports: [[u8; 2]; MAX_FTP_CONTROL_PORTS],
    /// Non-zero: the programs name the entries they create, change and remove in
    /// `SYNC_EVENTS` (see [`crate::sync_event`]), for the HA state sync.
    pub sync_events: u32,
    pub tcp_established_timeout_ns: u64,
    pub tcp_transitory_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    pub icmp_timeout_ns: u64,
}

impl NatConfig {
    /// How long a session may idle. RFC 5382 REQ-5: established TCP at least 2 h 4 min,
    /// handshakes and closing connections 4 min; RFC 4787: UDP at least 2 min. One definition
    /// for the fast path (expiry on lookup) and the agent (periodic sweep).
    #[inline(always)]
    pub fn session_timeout_ns(&self, proto: u8, state: u8) -> u64 {
        match proto {
            IPPROTO_TCP => tcp::idle_timeout_ns(
                state & session_state::ESTABLISHED != 0,
                state & (session_state::FIN | session_state::RST) != 0,
                self.tcp_established_timeout_ns,
                self.tcp_transitory_timeout_ns,
            ),
            IPPROTO_UDP => self.udp_timeout_ns,
            _ => self.icmp_timeout_ns,
        }
    }

    /// How long a mapping stays open to a host it sent to, without traffic: as long as an
    /// established connection of the protocol would.
    #[inline(always)]
    pub fn mapping_timeout_ns(&self, proto: u8) -> u64 {
        match proto {
            IPPROTO_TCP => self.tcp_established_timeout_ns,
            IPPROTO_UDP => self.udp_timeout_ns,
            _ => self.icmp_timeout_ns,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), byte arrays only.
unsafe impl aya::Pod for Ipv4Cidr {}
#[cfg(feature = "user")]
// SAFETY: repr(C), integers and arrays; u64 fields start 8-aligned (checked in tests).
unsafe impl aya::Pod for NatConfig {}

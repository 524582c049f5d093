//! Types shared by the BPF fast path (`gateway-ebpf`) and the agent (`gateway-user`).
//!
//! Everything here is `#[repr(C)]` and lays out exactly as the BPF side sees it. Multi-byte
//! packet fields are kept as byte arrays in network order, as they stand in the packet, so
//! neither side ever has to wonder which byte order a field is in.
#![no_std]

pub mod checksum;

use core::net::{Ipv4Addr, SocketAddrV4};

/// IANA protocol numbers of the transports the fast path translates.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Names of the maps and programs in the BPF object, shared so that neither side can drift.
pub mod names {
    pub const PUBLISH_DNAT: &str = "PUBLISH_DNAT";
    pub const PUBLISH_SNAT: &str = "PUBLISH_SNAT";
    pub const STATS: &str = "STATS";
    pub const PROG_XDP: &str = "gateway_xdp";
    pub const PROG_TC: &str = "gateway_tc";
}

/// Capacity of each published-server map. A publish is one (address, port, protocol) triple,
/// so this bounds the number of `[[publish]]` entries in a config.
pub const MAX_PUBLISHED: u32 = 4096;

/// A transport endpoint as it appears in an IPv4 packet: the key and value of the
/// published-server maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Endpoint {
    /// IPv4 address, network order.
    pub addr: [u8; 4],
    /// TCP/UDP port, network order.
    pub port: [u8; 2],
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// Always zero: hash-map keys are compared bytewise, padding included.
    pub _pad: u8,
}

impl Endpoint {
    pub const fn new(addr: [u8; 4], port: [u8; 2], proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }

    pub fn from_socket(socket: SocketAddrV4, proto: u8) -> Self {
        Self::new(socket.ip().octets(), socket.port().to_be_bytes(), proto)
    }

    pub fn socket(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.addr), u16::from_be_bytes(self.port))
    }
}

#[cfg(feature = "user")]
// SAFETY: `Endpoint` is `#[repr(C)]`, `Copy`, made only of byte arrays and bytes, and has no
// implicit padding (the explicit `_pad` is always written as zero).
unsafe impl aya::Pod for Endpoint {}

/// Per-CPU counters of the fast path, indexes into the `STATS` array.
///
/// The agent sums them over CPUs. Every packet the programs see lands in exactly one of the
/// verdict counters (translated, passed for a reason, or dropped for a reason).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Destination rewritten from a published address to its private server.
    DnatPublished = 0,
    /// Source of a published server's reply rewritten to its public address.
    SnatPublished = 1,
    /// Not IPv4 (ARP, IPv6, VLAN-tagged, ...): handed to the kernel untouched.
    PassNotIpv4 = 2,
    /// IPv4 whose headers could not be parsed (truncated, bad IHL): the kernel decides.
    PassMalformed = 3,
    /// An IPv4 fragment: reassembly is the kernel's job for now.
    PassFragment = 4,
    /// IPv4 that matches no translation rule.
    PassUnmatched = 5,
    /// A rewrite helper failed half-way: the packet is inconsistent and must not leave.
    DropRewriteFailed = 6,
}

impl Counter {
    pub const ALL: [Counter; 7] = [
        Counter::DnatPublished,
        Counter::SnatPublished,
        Counter::PassNotIpv4,
        Counter::PassMalformed,
        Counter::PassFragment,
        Counter::PassUnmatched,
        Counter::DropRewriteFailed,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable snake_case name, used in logs, `--json` output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::DnatPublished => "dnat_published",
            Counter::SnatPublished => "snat_published",
            Counter::PassNotIpv4 => "pass_not_ipv4",
            Counter::PassMalformed => "pass_malformed",
            Counter::PassFragment => "pass_fragment",
            Counter::PassUnmatched => "pass_unmatched",
            Counter::DropRewriteFailed => "drop_rewrite_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_round_trips_a_socket_address_in_network_order() {
        let socket: SocketAddrV4 = "203.0.113.1:8021".parse().unwrap();
        let endpoint = Endpoint::from_socket(socket, IPPROTO_TCP);
        assert_eq!(endpoint.addr, [203, 0, 113, 1]);
        assert_eq!(endpoint.port, [0x1f, 0x55]);
        assert_eq!(endpoint.socket(), socket);
        assert_eq!(core::mem::size_of::<Endpoint>(), 8);
    }

    #[test]
    fn counters_are_dense_and_named() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
            assert!(!counter.name().is_empty());
        }
    }
}

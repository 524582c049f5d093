//! The published servers' map entries: an endpoint as it stands in a packet.

use core::net::{Ipv4Addr, SocketAddrV4};

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
    /// `endpoint_flags`; always zero in keys (hash-map keys are compared bytewise).
    pub flags: u8,
}

/// `Endpoint::flags`, set only in map values.
pub mod endpoint_flags {
    /// In `MASQ_BY_PUBLIC`: a public port the FTP ALG holds for an announced data connection.
    /// Only that connection's expectation opens it; filtering never admits other traffic.
    pub const ALG_CLAIM: u8 = 1;
}

impl Endpoint {
    pub const fn new(addr: [u8; 4], port: [u8; 2], proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            flags: 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IPPROTO_TCP;

    #[test]
    fn endpoint_round_trips_a_socket_address_in_network_order() {
        let socket: SocketAddrV4 = "203.0.113.1:8021".parse().unwrap();
        let endpoint = Endpoint::from_socket(socket, IPPROTO_TCP);
        assert_eq!(endpoint.addr, [203, 0, 113, 1]);
        assert_eq!(endpoint.port, [0x1f, 0x55]);
        assert_eq!(endpoint.socket(), socket);
        assert_eq!(core::mem::size_of::<Endpoint>(), 8);
    }
}

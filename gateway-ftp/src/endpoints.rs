//! Where each side of a control connection is, which way a line travels, and the data
//! connections an announcement asks the fast path for: the vocabulary the session (TCP) and the
//! inspection (lines) share.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Ports below this are never opened for a data connection (RFC 2577, FTP bounce).
pub const MIN_DATA_PORT: u16 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::ClientToServer, Direction::ServerToClient];

    /// The slot of this direction (and of the side that sends in it) in per-direction arrays.
    pub const fn index(self) -> usize {
        match self {
            Direction::ClientToServer => 0,
            Direction::ServerToClient => 1,
        }
    }

    pub const fn opposite(self) -> Direction {
        match self {
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::ServerToClient => Direction::ClientToServer,
        }
    }
}

/// Where each side really is, and where the other side sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoints {
    pub client_real: Ipv4Addr,
    /// The client's address as the server sees it (the public one when masqueraded).
    pub client_seen: Ipv4Addr,
    pub server_real: Ipv4Addr,
    /// The server's address as the client sees it (the public one when published).
    pub server_seen: Ipv4Addr,
}

/// A data connection the fast path must let through and translate: from `peer` (any source
/// port) to `public`, delivered to `private`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expectation {
    pub peer: Ipv4Addr,
    pub public: SocketAddrV4,
    pub private: SocketAddrV4,
}

/// A data connection that the side behind the gateway opens itself, towards an endpoint the
/// other side announced (a published server in active mode connecting back to a `PORT`): from
/// `opener` (any source port) to `to`, with `source` as its public source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundExpectation {
    pub opener: Ipv4Addr,
    pub to: SocketAddrV4,
    pub source: Ipv4Addr,
}

/// Chooses the public port on `public` for the announced data endpoint `private` (the shell
/// knows which are free, and claims the one it returns), preferably `private`'s own port.
pub trait PortAllocator {
    fn allocate(&mut self, public: Ipv4Addr, private: SocketAddrV4) -> Option<u16>;

    /// Whether the session may announce one more data connection now (its pending
    /// expectations are under the policy's limit).
    fn may_expect(&mut self) -> bool {
        true
    }
}

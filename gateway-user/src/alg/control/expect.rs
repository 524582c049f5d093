//! The fast path's expectation for a data connection an FTP control connection announced:
//! which kind, and where it leads, by where the control connection's two ends are.
//!
//! - A published server's client from outside, or a masqueraded client of an outside server:
//!   the data connection comes in to the public endpoint of the line and goes to its private
//!   endpoint (`INBOUND`); nothing else about it changes.
//! - Hairpinning (an inside client of a published inside server, through its public address):
//!   both ends are behind the gateway, and each sees the other at a public address, so the
//!   data connection is translated both ways as any hairpinned connection is, as Linux's
//!   `nf_nat_ftp` does with its `nf_nat_follow_master`. Passive mode: the client connects to
//!   the public data endpoint; it reaches the server from its masquerade mapping
//!   (`HairpinToServer`). Active mode: the server connects to the masquerade endpoint the
//!   client's `PORT` was rewritten to; it reaches the client from the server's public address,
//!   which is where the client sees its server (`HairpinToClient`). Either way each end
//!   sends its packets back to the gateway, never straight to the other on the inside
//!   network, where they would arrive from an address it does not know.

use std::net::SocketAddrV4;

use gateway_common::{Endpoint, ExpectationEntry, ExpectationKey, ExpectationKind, IPPROTO_TCP};
use gateway_ftp::session::{Direction, Expectation};

/// A control connection's ends as the agent translates it.
pub(super) struct Ends {
    pub client: SocketAddrV4,
    pub client_seen: SocketAddrV4,
    pub server: SocketAddrV4,
    pub server_seen: SocketAddrV4,
}

impl Ends {
    /// Both ends behind the gateway, each seeing the other at a public address.
    pub fn hairpinned(&self) -> bool {
        self.client_seen.ip() != self.client.ip() && self.server_seen.ip() != self.server.ip()
    }
}

/// The map entry for `expectation`, announced by a line that went in `direction`, void after
/// `expires_ns`. The key admits only the peer the core named: the other end of this control
/// connection.
pub(super) fn entry(
    ends: &Ends,
    direction: Direction,
    expectation: &Expectation,
    expires_ns: u64,
) -> (ExpectationKey, ExpectationEntry) {
    let key = ExpectationKey {
        endpoint: Endpoint::from_socket(expectation.public, IPPROTO_TCP),
        peer: expectation.peer.octets(),
    };
    let (kind, source) = match (ends.hairpinned(), direction) {
        (false, _) => (ExpectationKind::Inbound as u8, [0; 4]),
        // A `227`/`229`: the client opens it.
        (true, Direction::ServerToClient) => (ExpectationKind::HairpinToServer as u8, [0; 4]),
        // A `PORT`/`EPRT`: the server opens it.
        (true, Direction::ClientToServer) => (
            ExpectationKind::HairpinToClient as u8,
            ends.server_seen.ip().octets(),
        ),
    };
    let entry = ExpectationEntry {
        target: Endpoint::from_socket(expectation.private, IPPROTO_TCP),
        kind,
        _pad: [0; 3],
        source,
        expires_ns,
    };
    (key, entry)
}

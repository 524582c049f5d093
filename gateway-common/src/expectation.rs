//! Data connections the FTP ALG announced and the fast path opens once.

use crate::Endpoint;

/// A data connection announced on an FTP control connection: the key of `EXPECTATIONS`, as
/// its first packet (a SYN) arrives: the endpoint it is addressed to and its source address
/// (any source port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ExpectationKey {
    pub endpoint: Endpoint,
    pub peer: [u8; 4],
}

wire_enum! {
    /// `ExpectationEntry::kind`: how the data connection is translated.
    pub enum ExpectationKind: u8 {
        /// The data connection comes in to a public endpoint: its destination becomes
        /// `target`.
        Inbound = 1,
        /// The data connection goes out from behind the gateway: its source address becomes
        /// `target.addr` (the source port is kept).
        Outbound = 2,
        /// Hairpinned passive mode: an inside client opens the data connection to the public
        /// endpoint a published inside server's `227`/`229` was rewritten to. Translated as
        /// any hairpinned connection: the destination becomes `target` (the server), the
        /// source the client's masquerade mapping, so the server answers through the gateway.
        HairpinToServer = 3,
        /// Hairpinned active mode: a published inside server opens the data connection to the
        /// masquerade endpoint an inside client's `PORT`/`EPRT` was rewritten to. The
        /// destination becomes `target` (the client), the source address `source` (the
        /// server's public address, which the client talks to; the source port is kept).
        HairpinToClient = 4,
    }
}

impl ExpectationKind {
    /// How `gateway expectations` names a kind.
    pub fn name(self) -> &'static str {
        match self {
            ExpectationKind::Inbound => "inbound",
            ExpectationKind::Outbound => "outbound",
            ExpectationKind::HairpinToServer => "hairpin-to-server",
            ExpectationKind::HairpinToClient => "hairpin-to-client",
        }
    }
}

/// What an expectation does, once: the SYN that uses it removes it and creates the two
/// sessions of the data connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ExpectationEntry {
    pub target: Endpoint,
    pub kind: u8,
    pub _pad: [u8; 3],
    /// `HairpinToClient`: the source address the data connection gets; zero otherwise.
    pub source: [u8; 4],
    /// `bpf_ktime_get_ns` after which it is void.
    pub expires_ns: u64,
}

/// Data connections announced and not yet opened, at most.
pub const MAX_EXPECTATIONS: u32 = 65536;

#[cfg(feature = "user")]
// SAFETY: repr(C), byte arrays and bytes, no implicit padding.
unsafe impl aya::Pod for ExpectationKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C); the explicit `_pad` puts `expires_ns` on its 8-byte boundary.
unsafe impl aya::Pod for ExpectationEntry {}

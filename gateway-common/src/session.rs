//! The connection table: one entry per direction of a translated connection.

/// Default capacity of the session table (two entries per connection, one per direction).
pub const DEFAULT_MAX_SESSIONS: u32 = 1 << 20;

/// One direction of a connection as it arrives at the gateway: the session table's key.
///
/// For ICMP echo the identifier stands in for the ports: `src_port` = identifier in a request,
/// `dst_port` = identifier in a reply, the other zero, so that a request's key reversed is
/// its reply's key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// The key of the other direction, before any translation.
    pub const fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

wire_enum! {
    /// `Session::rewrite`: which endpoint of the packet the session replaces.
    pub enum Rewrite: u8 {
        Source = 1,
        Destination = 2,
        /// Both, for hairpinned connections: source from `addr`/`port`, destination from
        /// `peer_addr`/`peer_port`.
        Both = 3,
    }
}

/// `Session::state` bits.
pub mod session_state {
    /// A packet without SYN passed: the handshake is over.
    pub const ESTABLISHED: u8 = 1;
    /// A FIN passed in this direction.
    pub const FIN: u8 = 2;
    /// An RST passed in this direction.
    pub const RST: u8 = 4;
}

/// What the fast path does to the packets of one direction of a connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Session {
    /// The endpoint that replaces the packet's source or destination (see `rewrite`).
    pub addr: [u8; 4],
    pub port: [u8; 2],
    /// A [`Rewrite`].
    pub rewrite: u8,
    /// `session_state` bits.
    pub state: u8,
    /// With `Rewrite::Both`: the endpoint that replaces the destination.
    pub peer_addr: [u8; 4],
    pub peer_port: [u8; 2],
    pub _pad: [u8; 2],
    /// `bpf_ktime_get_ns` of the last packet: CLOCK_MONOTONIC.
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
// SAFETY: as for Endpoint: repr(C), only integers and byte arrays, explicit padding zeroed.
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays; field order leaves no implicit padding.
unsafe impl aya::Pod for Session {}

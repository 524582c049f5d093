//! TCP header facts both the fast path and the agent read.

/// TCP flag bits (the 14th byte of the header).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// A connection's opening segment: SYN without ACK.
#[inline(always)]
pub const fn opens_connection(flags: u8) -> bool {
    flags & (flags::SYN | flags::ACK) == flags::SYN
}

/// How long a TCP connection may idle (RFC 5382 REQ-5): an established one that is not
/// closing, `established_ns` (at least 2 h 4 min); one opening or closing, `transitory_ns`
/// (4 min). One rule for the fast path's sessions and the agent's control connections.
#[inline(always)]
pub const fn idle_timeout_ns(
    established: bool,
    closing: bool,
    established_ns: u64,
    transitory_ns: u64,
) -> u64 {
    if established && !closing {
        established_ns
    } else {
        transitory_ns
    }
}

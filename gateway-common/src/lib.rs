//! Types shared by the BPF fast path (`gateway-ebpf`) and the agent (`gateway-user`).
//!
//! Everything here is `#[repr(C)]` and lays out exactly as the BPF side sees it. Multi-byte
//! packet fields are kept as byte arrays in network order, as they stand in the packet, so
//! neither side ever has to wonder which byte order a field is in.
#![no_std]

pub mod checksum;
pub mod icmp;
pub mod masquerade;
pub mod outcome;
pub mod tcp;
#[macro_use]
pub mod wire;

use core::net::{Ipv4Addr, SocketAddrV4};

/// IANA protocol numbers of the transports the fast path translates.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Names of the maps and programs in the BPF object, shared so that neither side can drift.
pub mod names {
    pub const PUBLISH_DNAT: &str = "PUBLISH_DNAT";
    pub const PUBLISH_SNAT: &str = "PUBLISH_SNAT";
    pub const STATS: &str = "STATS";
    pub const SESSIONS: &str = "SESSIONS";
    pub const MASQ_BY_PRIVATE: &str = "MASQ_BY_PRIVATE";
    pub const MASQ_BY_PUBLIC: &str = "MASQ_BY_PUBLIC";
    pub const MASQ_PEERS: &str = "MASQ_PEERS";
    pub const EXPECTATIONS: &str = "EXPECTATIONS";
    pub const NAT_CONFIG: &str = "NAT_CONFIG";
    pub const PROG_XDP: &str = "gateway_xdp";
    pub const PROG_TC: &str = "gateway_tc";
    pub const PUNT: &str = "PUNT";
    pub const PUNT_ENDPOINTS: &str = "PUNT_ENDPOINTS";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const LAYOUT: &str = "LAYOUT";
    pub const REDIRECT_PORTS: &str = "REDIRECT_PORTS";
    pub const PUNT_TAP: &str = "PUNT_TAP";
    pub const PUNT_TAP_XDP: &str = "PUNT_TAP_XDP";
    /// Every map of the object: what `[dataplane] pin_path` pins, and a restarted agent
    /// adopts.
    pub const ALL_MAPS: [&str; 16] = [
        PUBLISH_DNAT,
        PUBLISH_SNAT,
        STATS,
        SESSIONS,
        MASQ_BY_PRIVATE,
        MASQ_BY_PUBLIC,
        MASQ_PEERS,
        EXPECTATIONS,
        NAT_CONFIG,
        PUNT,
        PUNT_ENDPOINTS,
        FRAGMENTS,
        LAYOUT,
        REDIRECT_PORTS,
        PUNT_TAP,
        PUNT_TAP_XDP,
    ];
}

/// The version of everything the maps hold: key and value layouts and their meaning. Bumped
/// whenever any of them changes, so that an agent never adopts pinned maps of another layout
/// (it refuses, and says how to start fresh). Stored in the `LAYOUT` map.
pub const LAYOUT_VERSION: u32 = 3;

/// Interfaces in `REDIRECT_PORTS` (the gateway attaches to two; room for more).
pub const MAX_REDIRECT_PORTS: u32 = 64;

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

/// Default capacity of the session table (two entries per connection, one per direction).
pub const DEFAULT_MAX_SESSIONS: u32 = 1 << 20;
/// Networks and public addresses a masquerade rule can name.
pub const MAX_MASQ_NETWORKS: usize = 8;
pub const MAX_MASQ_ADDRESSES: usize = 8;
/// Free-port probes per new mapping before the pool counts as exhausted (Cilium's nat.h does
/// the same: the original port, then bounded random retries).
pub const PORT_ALLOCATION_TRIES: u32 = 16;

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

/// A fragmented datagram: the key of `FRAGMENTS`. Only the first fragment carries ports, so
/// the translation found for it is remembered for the others under the datagram's identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragmentKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub id: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// The addresses a fragmented datagram's fragments get.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragmentTranslation {
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// Datagrams being fragmented through the gateway at once.
pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 16384;

#[cfg(feature = "user")]
// SAFETY: repr(C), byte arrays and bytes, no implicit padding.
unsafe impl aya::Pod for FragmentKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), byte arrays.
unsafe impl aya::Pod for FragmentTranslation {}

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
    pub _pad: u32,
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
// SAFETY: as for Endpoint: repr(C), only integers and byte arrays, explicit padding zeroed.
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays; field order leaves no implicit padding.
unsafe impl aya::Pod for Session {}
#[cfg(feature = "user")]
// SAFETY: repr(C), byte arrays only.
unsafe impl aya::Pod for Ipv4Cidr {}
#[cfg(feature = "user")]
// SAFETY: repr(C), integers and arrays; u64 fields start 8-aligned (checked in tests).
unsafe impl aya::Pod for NatConfig {}

/// Declares the fast path's counters from one list: each with its `STATS` index, its stable
/// snake_case name (logs, `--json` output, metrics) and its kind (`outcome::CounterKind`).
/// Generates the enum, `ALL` (in index order), `COUNT`, `name` and `kind`.
macro_rules! counters {
    (
        $(#[$outer:meta])*
        pub enum Counter {
            $($(#[doc = $doc:literal])* $variant:ident = $index:literal, $name:literal, $kind:ident;)+
        }
    ) => {
        $(#[$outer])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant = $index,)+
        }

        impl Counter {
            pub const COUNT: u32 = [$($name),+].len() as u32;
            pub const ALL: [Counter; Self::COUNT as usize] = [$(Counter::$variant),+];

            /// Stable snake_case name, used in logs, `--json` output and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)+
                }
            }

            /// Which kind of counter this is: a verdict (and which), or counted besides one.
            pub const fn kind(self) -> outcome::CounterKind {
                match self {
                    $(Counter::$variant => outcome::CounterKind::$kind,)+
                }
            }
        }
    };
}

counters! {
    /// Per-CPU counters of the fast path, indexes into the `STATS` array.
    ///
    /// The agent sums them over CPUs. Every packet the programs see lands in exactly one of the
    /// verdict counters (translated, passed for a reason, or dropped for a reason); `Redirected`,
    /// the ICMP errors sent or withheld, `PassedUntranslated` and the `Fib*` refusals count,
    /// besides, what happened to a translated packet next.
    pub enum Counter {
        /// Destination rewritten from a published address to its private server.
        DnatPublished = 0, "dnat_published", Translated;
        /// Source of a published server's reply rewritten to its public address.
        SnatPublished = 1, "snat_published", Translated;
        /// Not IPv4 (ARP, IPv6, VLAN-tagged, ...): handed to the kernel untouched.
        PassNotIpv4 = 2, "pass_not_ipv4", Passed;
        /// IPv4 whose headers could not be parsed (truncated, bad IHL): the kernel decides.
        PassMalformed = 3, "pass_malformed", Passed;
        /// An IPv4 fragment of a datagram the gateway does not translate.
        PassFragment = 4, "pass_fragment", Passed;
        /// IPv4 that matches no translation rule.
        PassUnmatched = 5, "pass_unmatched", Passed;
        /// A rewrite helper failed half-way: the packet is inconsistent and must not leave.
        DropRewriteFailed = 6, "drop_rewrite_failed", Dropped;
        /// Translated by an existing session (masquerade, either direction).
        SessionHit = 7, "session_hit", Translated;
        /// A new masqueraded connection: mapping found or allocated, two sessions created.
        SessionCreated = 8, "session_created", Translated;
        /// A session found past its timeout and removed.
        SessionExpired = 9, "session_expired", Besides;
        /// No free public port after `PORT_ALLOCATION_TRIES` probes: the packet is dropped.
        DropPortExhausted = 10, "drop_port_exhausted", Dropped;
        /// The session table refused an insert.
        DropSessionTableFull = 11, "drop_session_table_full", Dropped;
        /// Outside traffic to a masquerade address and port that no session or mapping admits.
        DropUnsolicited = 12, "drop_unsolicited", Dropped;
        /// An ICMP error about a translated connection, translated with the packet it quotes.
        IcmpErrorTranslated = 13, "icmp_error_translated", Translated;
        /// A new hairpinned connection (inside host to a published server's public address).
        HairpinCreated = 14, "hairpin_created", Translated;
        /// A later fragment (no transport header) given its datagram's translation.
        FragmentTranslated = 15, "fragment_translated", Translated;
        /// A later fragment of a datagram whose first fragment was not seen, that would otherwise
        /// leave untranslated (or vanish in the gateway's own reassembly).
        DropFragmentUnknown = 16, "drop_fragment_unknown", Dropped;
        /// A translated packet forwarded by the program itself (FIB lookup and redirect), past the
        /// gateway's stack. Counted in addition to its translation counter.
        Redirected = 17, "redirected", Besides;
        /// Arrived on the outside interface with a source address of an inside network.
        DropSpoofed = 18, "drop_spoofed", Dropped;
        /// A data connection's first packet found its expectation: two sessions created.
        ExpectationUsed = 19, "expectation_used", Translated;
        /// An expectation found past its expiry (removed; the packet is treated as unexpected).
        ExpectationExpired = 20, "expectation_expired", Besides;
        /// A packet of an FTP control connection, handed to the agent: redirected to its tap
        /// (TC, when the agent has one) or copied into the punt ring.
        Punted = 21, "punted", Punted;
        /// A packet of an FTP control connection that the punt ring had no room for (or that is
        /// larger than a record), after the tap, if any, refused it too: dropped, never forwarded
        /// untranslated; TCP retransmits it.
        DropPuntFailed = 22, "drop_punt_failed", Dropped;
        /// A packet with DF too big for the next link once translated: answered with ICMP
        /// fragmentation-needed to its original sender, quoting its original header (RFC 1191
        /// path-MTU discovery), instead of being forwarded. Counted in addition to its
        /// translation counter.
        FragNeededSent = 23, "frag_needed_sent", Besides;
        /// A translated packet whose TTL expires at the gateway: answered with ICMP time exceeded
        /// to its original sender, quoting its original header (`traceroute` through the
        /// gateway), instead of being forwarded. Counted in addition to its translation counter.
        TimeExceededSent = 24, "time_exceeded_sent", Besides;
        /// A translated packet the gateway cannot deliver: answered with ICMP destination
        /// unreachable to its original sender, quoting its original header: host unreachable for
        /// an `unreachable` route or a next hop that does not answer ARP, administratively
        /// prohibited for a `prohibit` route. Counted in addition to its translation counter.
        UnreachableSent = 25, "unreachable_sent", Besides;
        /// An ICMP error the gateway would have sent about a translated packet, withheld by the
        /// rate limits (per destination and overall, the kernel's defaults); the packet is dropped
        /// as the kernel drops it.
        IcmpErrorRateLimited = 26, "icmp_error_rate_limited", Besides;
        /// An ICMP error the gateway must not send: about an ICMP error or a later fragment, to or
        /// about a packet to a non-unicast address, or to a sender with no route back. The packet
        /// is dropped as the kernel drops it.
        IcmpErrorSuppressed = 27, "icmp_error_suppressed", Besides;
        /// A translated packet the route lookup does not forward (for the gateway itself, a
        /// broadcast, no route at all): its original addresses and ports are put back and the
        /// stack gets it as it arrived, so its own sockets see the real sender and its ICMP errors
        /// (net unreachable, port unreachable) reach it. Counted in addition to its translation
        /// counter.
        PassedUntranslated = 28, "passed_untranslated", Besides;
        /// `bpf_fib_lookup` refusals for translated packets, by result (counted in addition to
        /// the translation counter). Forwarding is disabled on the ingress interface: the stack
        /// gets the packet and drops it.
        FibForwardingDisabled = 29, "fib_forwarding_disabled", Besides;
        /// A `blackhole` route: dropped silently, as the kernel does.
        FibBlackhole = 30, "fib_blackhole", Besides;
        /// An `unreachable` route: answered with host unreachable.
        FibUnreachable = 31, "fib_unreachable", Besides;
        /// A `prohibit` route: answered with administratively prohibited.
        FibProhibit = 32, "fib_prohibit", Besides;
        /// Not a unicast route (local delivery, broadcast, no route): passed untranslated.
        FibNotForwarded = 33, "fib_not_forwarded", Besides;
        /// The next hop's link-layer address is not resolved yet: forwarded all the same (TC's
        /// `bpf_redirect_neigh`, or the stack, resolves it); one that stays unresolved is answered
        /// with host unreachable.
        FibNoNeighbour = 34, "fib_no_neighbour", Besides;
        /// Too big for the next link: fragmentation-needed with DF, else the stack fragments it.
        FibFragNeeded = 35, "fib_frag_needed", Besides;
        /// The route has a lightweight tunnel encapsulation: the stack handles it.
        FibUnsupportedLwt = 36, "fib_unsupported_lwt", Besides;
        /// No source address for the route: the stack handles it.
        FibNoSourceAddress = 37, "fib_no_source_address", Besides;
        /// The lookup itself failed (an unknown ingress interface): the stack handles it.
        FibError = 38, "fib_error", Besides;
    }
}

wire_enum! {
    /// Why a packet was punted: which side of which kind of FTP control connection sent it
    /// (the value of `PUNT_ENDPOINTS`, and of punt records and frames).
    pub enum PuntReason: u8 {
        /// From an outside client to a published server's public control endpoint.
        PublishedFromClient = 1,
        /// From a published server's private control endpoint.
        PublishedFromServer = 2,
        /// From a masqueraded inside client to an outside server's control port.
        MasqueradeFromClient = 3,
        /// From an outside server's control port to a masquerade address.
        MasqueradeFromServer = 4,
        /// From an inside client to a published server's public control endpoint
        /// (hairpinning): the server must see the client at its masquerade mapping. The
        /// server's side arrives as `PublishedFromServer`.
        HairpinFromClient = 5,
    }
}

/// The head of a punt ring record; the IPv4 packet (from its IP header on) follows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PuntHeader {
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// Bytes of the IPv4 packet that follow the header.
    pub len: u32,
    /// A [`PuntReason`].
    pub reason: u8,
    pub _pad: [u8; 3],
    /// When the packet was punted: the low 32 bits of `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    /// Enough for the agent to measure how long records wait in the ring (wrapping, under
    /// 4.29 s), in the header's 16 bytes.
    pub punted_ns_low: u32,
}

/// Punt records come in two sizes, chosen per packet, so that the common small segment does
/// not take a 64 KiB slot: `PUNT_SMALL_DATA` bytes of packet (an MTU-sized frame) or
/// `PUNT_LARGE_DATA` (the largest IPv4 packet: GSO/GRO super-packets of a control
/// connection).
pub const PUNT_SMALL_DATA: usize = 2048;
pub const PUNT_LARGE_DATA: usize = 65536;
pub const PUNT_HEADER_LEN: usize = core::mem::size_of::<PuntHeader>();
/// Bytes of the punt ring: 256 small records or 63 large ones in flight. When the agent
/// falls behind, further control packets are dropped (`DropPuntFailed`) and retransmitted.
pub const PUNT_RING_BYTES: u32 = 1 << 22;

/// Punt over the agent's TAP device (`PUNT_TAP`): the TC program overwrites the Ethernet
/// header of a punted frame with this metadata and redirects the frame to the tap, whose
/// reader is the agent. The original MAC addresses are of no use to the agent (it sends
/// through a raw IPv4 socket and the kernel resolves the next hop); the EtherType stays, so
/// that tools reading the tap still see IPv4.
///
/// Layout, over the 14 bytes of the Ethernet header:
/// `[0..4]` `punted_ns_low` (native order, as in [`PuntHeader`]), `[4..8]` ingress ifindex
/// (native order), `[8]` reason, `[9..12]` [`punt_frame::MAGIC`], `[12..14]` EtherType.
pub mod punt_frame {
    /// Marks a frame the fast path wrote: whatever else reaches the tap (nothing should: it
    /// has no address and IPv6 is off on it) is not taken for a punted packet.
    pub const MAGIC: [u8; 3] = *b"GWP";
    /// Bytes the program writes: the Ethernet header up to its EtherType.
    pub const META_LEN: usize = 12;
    pub const ETH_LEN: usize = 14;
    const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
    const ETHERTYPE_VLAN: [[u8; 2]; 2] = [[0x81, 0x00], [0x88, 0xa8]];

    /// What the agent learns of a punted frame besides the packet.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct Meta {
        pub punted_ns_low: u32,
        pub ifindex: u32,
        pub reason: u8,
    }

    impl Meta {
        #[inline(always)]
        pub fn encode(&self) -> [u8; META_LEN] {
            let time = self.punted_ns_low.to_ne_bytes();
            let ifindex = self.ifindex.to_ne_bytes();
            [
                time[0],
                time[1],
                time[2],
                time[3],
                ifindex[0],
                ifindex[1],
                ifindex[2],
                ifindex[3],
                self.reason,
                MAGIC[0],
                MAGIC[1],
                MAGIC[2],
            ]
        }
    }

    /// The metadata of a frame read from the tap and where its IPv4 packet starts; `None`
    /// for a frame the fast path did not write, or one that carries no IPv4 packet. A frame
    /// whose skb had its VLAN tag in metadata (a NIC's VLAN offload) gets the tag back in
    /// front of the EtherType when the tap hands it out: it is skipped.
    pub fn decode(frame: &[u8]) -> Option<(Meta, usize)> {
        let head = frame.get(..ETH_LEN)?;
        if head[9..12] != MAGIC {
            return None;
        }
        let word =
            |at: usize| u32::from_ne_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        let meta = Meta {
            punted_ns_low: word(0),
            ifindex: word(4),
            reason: head[8],
        };
        let mut ethertype_at = 12;
        if ETHERTYPE_VLAN
            .iter()
            .any(|tag| frame.get(12..14) == Some(tag))
        {
            ethertype_at = 16;
        }
        (frame.get(ethertype_at..ethertype_at + 2)? == ETHERTYPE_IPV4)
            .then_some((meta, ethertype_at + 2))
    }
}

/// Published FTP control endpoints (`alg = "ftp"`), public and private: the key of
/// `PUNT_ENDPOINTS`, whose value is the [`PuntReason`] of packets addressed to (public) or
/// sent from (private) that endpoint.
pub const MAX_PUNT_ENDPOINTS: u32 = 2 * MAX_PUBLISHED;

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
    fn shared_layouts_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 16);
        assert_eq!(core::mem::size_of::<Session>(), 40);
        assert_eq!(core::mem::size_of::<ExpectationKey>(), 12);
        assert_eq!(core::mem::size_of::<ExpectationEntry>(), 24);
        assert_eq!(PUNT_HEADER_LEN, 16);
        // Changing any of these sizes (or a field's meaning) needs a LAYOUT_VERSION bump.
        assert_eq!(core::mem::size_of::<NatConfig>(), 184);
        assert_eq!(core::mem::size_of::<PeerKey>(), 12);
        assert_eq!(LAYOUT_VERSION, 3);
        // Version 3: the hairpin expectations' source, and the counters of the route lookup
        // and the ICMP errors (STATS grew).
        assert_eq!(core::mem::offset_of!(ExpectationEntry, source), 12);
        assert_eq!(Counter::COUNT, 39);
        let mut names = names::ALL_MAPS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), names::ALL_MAPS.len());
        assert_eq!(
            core::mem::offset_of!(NatConfig, tcp_established_timeout_ns) % 8,
            0
        );
        let key = FlowKey {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            src_port: [0, 9],
            dst_port: [0, 10],
            proto: 6,
            _pad: [0; 3],
        };
        assert_eq!(key.reversed().reversed(), key);
        assert_eq!(key.reversed().src, [5, 6, 7, 8]);
        let net = Ipv4Cidr {
            addr: [10, 0, 0, 0],
            mask: [255, 255, 255, 0],
        };
        assert!(net.contains([10, 0, 0, 77]) && !net.contains([10, 0, 1, 1]));
    }

    #[test]
    fn punt_frame_metadata_round_trips_and_foreign_frames_are_refused() {
        let meta = punt_frame::Meta {
            punted_ns_low: 0xdead_beef,
            ifindex: 7,
            reason: PuntReason::MasqueradeFromServer as u8,
        };
        let mut frame = [0u8; 40];
        frame[..punt_frame::META_LEN].copy_from_slice(&meta.encode());
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        assert_eq!(punt_frame::decode(&frame), Some((meta, 14)));
        // A VLAN tag the tap put back in front of the EtherType.
        let mut tagged = [0u8; 44];
        tagged[..12].copy_from_slice(&frame[..12]);
        tagged[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged[16..18].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(punt_frame::decode(&tagged), Some((meta, 18)));
        // Not IPv4, not ours (real MAC addresses), too short.
        let mut arp = frame;
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(punt_frame::decode(&arp), None);
        let mut foreign = frame;
        foreign[9..12].copy_from_slice(&[0x02, 0x42, 0xac]);
        assert_eq!(punt_frame::decode(&foreign), None);
        assert_eq!(punt_frame::decode(&frame[..13]), None);
    }

    #[test]
    fn wire_enums_read_back_what_was_written_and_refuse_the_rest() {
        for &reason in PuntReason::ALL {
            assert_eq!(PuntReason::try_from(reason as u8), Ok(reason));
        }
        for &rewrite in Rewrite::ALL {
            assert_eq!(Rewrite::try_from(rewrite as u8), Ok(rewrite));
        }
        for &filtering in Filtering::ALL {
            assert_eq!(Filtering::try_from(filtering as u32), Ok(filtering));
        }
        assert_eq!(
            PuntReason::try_from(0),
            Err(wire::UnknownValue {
                what: "PuntReason",
                value: 0
            })
        );
        assert!(Rewrite::try_from(4).is_err());
        assert!(Filtering::try_from(3).is_err());
    }

    #[test]
    fn counters_are_dense_and_named() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
            assert!(!counter.name().is_empty());
        }
    }
}

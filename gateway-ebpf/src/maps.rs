//! The maps shared with the agent. Names and value types come from `gateway-common`; sizes
//! are the defaults, which the agent may override at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMap, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use gateway_common::{
    Counter, DEFAULT_MAX_SESSIONS, Endpoint, ExpectationEntry, ExpectationKey, FlowKey,
    FragmentKey, FragmentTranslation, MAX_EXPECTATIONS, MAX_FRAGMENTED_DATAGRAMS, MAX_PUBLISHED,
    MAX_PUNT_ENDPOINTS, MAX_REDIRECT_PORTS, NatConfig, PUNT_RING_BYTES, PeerKey, Session,
    control_ack::{ControlAck, MAX_CONTROL_ACKS},
    icmp::{TokenBucket, Unresolved, neighbour, rate},
    sync_event::SYNC_EVENTS_BYTES,
};

/// Published servers, keyed by public endpoint: where to send traffic addressed to it.
#[map(name = "PUBLISH_DNAT")]
pub static PUBLISH_DNAT: HashMap<Endpoint, Endpoint> = HashMap::with_max_entries(MAX_PUBLISHED, 0);

/// The same servers keyed by private endpoint: which public endpoint their replies come from.
#[map(name = "PUBLISH_SNAT")]
pub static PUBLISH_SNAT: HashMap<Endpoint, Endpoint> = HashMap::with_max_entries(MAX_PUBLISHED, 0);

/// Masqueraded connections, one entry per direction, keyed as packets arrive. LRU: under
/// pressure the least recently used connection goes, not new ones.
#[map(name = "SESSIONS")]
pub static SESSIONS: LruHashMap<FlowKey, Session> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SESSIONS, 0);

/// Endpoint-independent mapping: a private endpoint keeps its public endpoint whatever it
/// talks to (RFC 4787/5382 REQ-1).
#[map(name = "MASQ_BY_PRIVATE")]
pub static MASQ_BY_PRIVATE: LruHashMap<Endpoint, Endpoint> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SESSIONS, 0);

/// Who owns each public endpoint: ports are claimed here with BPF_NOEXIST, so one public
/// endpoint never serves two private ones (no port overloading, REQ-7).
#[map(name = "MASQ_BY_PUBLIC")]
pub static MASQ_BY_PUBLIC: LruHashMap<Endpoint, Endpoint> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SESSIONS, 0);

/// Remote hosts each public endpoint has sent to, for address-dependent filtering; the value
/// is when it last did (`bpf_ktime_get_ns`), refreshed at most once a second per connection.
#[map(name = "MASQ_PEERS")]
pub static MASQ_PEERS: LruHashMap<PeerKey, u64> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SESSIONS, 0);

/// Translations of fragmented datagrams, from their first fragment, for the later ones.
#[map(name = "FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentTranslation> =
    LruHashMap::with_max_entries(MAX_FRAGMENTED_DATAGRAMS, 0);

/// Data connections announced on FTP control connections, not yet opened.
#[map(name = "EXPECTATIONS")]
pub static EXPECTATIONS: HashMap<ExpectationKey, ExpectationEntry> =
    HashMap::with_max_entries(MAX_EXPECTATIONS, 0);

/// Published FTP control endpoints, public and private, with the `PuntReason` of their
/// packets: those go to the agent.
#[map(name = "PUNT_ENDPOINTS")]
pub static PUNT_ENDPOINTS: HashMap<Endpoint, u8> = HashMap::with_max_entries(MAX_PUNT_ENDPOINTS, 0);

/// Pure ACKs of FTP control connections the programs forward themselves, per direction as
/// packets arrive: what the agent wrote of its sequence maps (`nat/control_ack.rs`).
#[map(name = "CONTROL_ACKS")]
pub static CONTROL_ACKS: HashMap<FlowKey, ControlAck> =
    HashMap::with_max_entries(MAX_CONTROL_ACKS, 0);

/// Entries created, changed and removed, named for the HA state sync (see
/// `gateway_common::sync_event` and `nat/sync_events.rs`).
#[map(name = "SYNC_EVENTS")]
pub static SYNC_EVENTS: RingBuf = RingBuf::with_byte_size(SYNC_EVENTS_BYTES, 0);

/// Packets of FTP control connections, for the agent (see `punt.rs`).
#[map(name = "PUNT")]
pub static PUNT: RingBuf = RingBuf::with_byte_size(PUNT_RING_BYTES, 0);

/// The agent's punt tap (element 0), for TC: punted packets are redirected to it instead of
/// copied into `PUNT`. A devmap, not a plain ifindex, because the kernel empties a devmap
/// slot when its device is unregistered: the tap goes away with the agent's descriptor (even
/// on `kill -9`), and a plain ifindex left behind would send punts to a device that no
/// longer exists (`bpf_redirect` answers TC_ACT_REDIRECT and the packet is dropped later, in
/// `skb_do_redirect`, uncounted) or, once the index is reused, to an unrelated one. TC cannot
/// `bpf_redirect_map`; it looks the slot up and redirects by the ifindex found there.
#[map(name = "PUNT_TAP")]
pub static PUNT_TAP: DevMap = DevMap::with_max_entries(1, 0);

/// The same tap for XDP, in a map of its own: the kernel ties a devmap to the type of the
/// first program that uses it (a devmap can hold XDP programs), and refuses to load a TC
/// program using a devmap an XDP program uses (EINVAL after verification).
#[map(name = "PUNT_TAP_XDP")]
pub static PUNT_TAP_XDP: DevMap = DevMap::with_max_entries(1, 0);

/// `LAYOUT_VERSION` of the agent that created the maps (element 0): a restarted agent adopts
/// pinned maps only when it matches its own. The programs never read it.
#[map(name = "LAYOUT")]
pub static LAYOUT: Array<u32> = Array::with_max_entries(1, 0);

/// Masquerade and timeout settings; element 0.
#[map(name = "NAT_CONFIG")]
pub static NAT_CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);

/// The interfaces XDP may redirect translated packets to, keyed by ifindex: the ones the agent
/// attached the fast path to (it keeps the map in step when an interface comes back with a new
/// ifindex). An egress interface not in here gets the packet through the stack instead.
#[map(name = "REDIRECT_PORTS")]
pub static REDIRECT_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_REDIRECT_PORTS, 0);

/// The ICMP errors the programs send, per destination: the kernel's per-host rate limit
/// (`icmp_error.rs`). Not pinned: a new program starts with full buckets.
#[map(name = "ICMP_RATE")]
pub static ICMP_RATE: LruHashMap<[u8; 4], TokenBucket> =
    LruHashMap::with_max_entries(rate::MAX_DESTINATIONS, 0);

/// The same over all destinations (element 0): the kernel's `icmp_msgs_per_sec`.
#[map(name = "ICMP_RATE_ALL")]
pub static ICMP_RATE_ALL: Array<TokenBucket> = Array::with_max_entries(1, 0);

/// Next hops found unresolved, and since when, one slot per next hop by a hash of it (see
/// `neighbour.rs`). Not pinned: a new program starts resolving afresh.
#[map(name = "UNRESOLVED")]
pub static UNRESOLVED: Array<Unresolved> = Array::with_max_entries(neighbour::SLOTS, 0);

/// Per-CPU packet counters, indexed by [`Counter`].
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(value) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and BPF programs are not preempted on their CPU.
        unsafe { *value += 1 };
    }
}

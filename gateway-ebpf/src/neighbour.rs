//! Next hops that never resolve. The kernel answers a packet for a neighbour that does not
//! reply to ARP with host-unreachable when its resolution gives up, seconds after the packet
//! left the fast path, about the translated packet and to its translated source: that message
//! goes to the gateway itself over loopback, or out of an interface, and never passes the
//! programs, so it cannot be given back to the real sender. Instead, the first packet that
//! finds a next hop unresolved (`BPF_FIB_LKUP_RET_NO_NEIGH`) is remembered; while the kernel
//! is still resolving, packets go on to it; once it has had the time to give up
//! (`neighbour::FAILED_AFTER_NS` in `gateway_common::icmp`), further packets are answered
//! with host-unreachable at once, until a new round of resolution is due. A next hop that
//! resolves meanwhile is found by the lookup and never gets here.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use gateway_common::icmp::{
    NextHop,
    neighbour::{Phase, phase},
};

use crate::maps::UNRESOLVED;

/// Whether the kernel has given up resolving `next_hop` (the lookup found it unresolved).
#[inline(always)]
pub fn failed(next_hop: NextHop) -> bool {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(since) = UNRESOLVED.get_ptr_mut(next_hop) else {
        let _ = UNRESOLVED.insert(next_hop, now, 0);
        return false;
    };
    // SAFETY: a live map value; racing CPUs write nearly the same time.
    unsafe {
        match phase(*since, now) {
            Phase::Resolving => false,
            Phase::Failed => true,
            Phase::Retry => {
                *since = now;
                false
            }
        }
    }
}

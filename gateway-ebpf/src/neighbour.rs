//! Next hops that never resolve. The kernel answers a packet for a neighbour that does not
//! reply to ARP with host-unreachable when its resolution gives up, seconds after the packet
//! left the fast path, about the translated packet and to its translated source: that message
//! goes to the gateway itself over loopback, or out of an interface, and never passes the
//! programs, so it cannot be given back to the real sender. Instead, the first packet that
//! finds a next hop unresolved (`BPF_FIB_LKUP_RET_NO_NEIGH`) is remembered; while the kernel
//! is still resolving, packets go on to it; once it has had the time to give up
//! (`neighbour::FAILED_AFTER_NS` in `gateway_common::icmp`), further packets are answered
//! with host-unreachable at once, until a new round of resolution is due. A packet that finds
//! the next hop resolved makes it forgotten: one flushed from the neighbour table and resolved
//! again starts afresh next time.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use gateway_common::icmp::{
    NextHop, Unresolved,
    neighbour::{Phase, phase, slot},
};

use crate::maps::UNRESOLVED;

/// Whether the kernel has given up resolving `next_hop` (the lookup found it unresolved).
#[inline(always)]
pub fn failed(next_hop: NextHop) -> bool {
    let Some(entry) = UNRESOLVED.get_ptr_mut(slot(&next_hop)) else {
        return false;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a live map value; CPUs racing on a slot write nearly the same thing.
    let entry = unsafe { &mut *entry };
    if entry.next_hop != next_hop {
        // Not seen (or its slot taken since): a round starts now.
        *entry = Unresolved {
            next_hop,
            since_ns: now,
        };
        return false;
    }
    match phase(entry.since_ns, now) {
        Phase::Resolving => false,
        Phase::Failed => true,
        Phase::Retry => {
            entry.since_ns = now;
            false
        }
    }
}

/// `next_hop` has resolved (the lookup found its MAC address): forgotten, if remembered.
/// On every forwarded packet: one array slot looked at.
#[inline(always)]
pub fn resolved(next_hop: NextHop) {
    if let Some(entry) = UNRESOLVED.get_ptr_mut(slot(&next_hop)) {
        // SAFETY: a live map value.
        unsafe {
            if (*entry).next_hop == next_hop {
                (*entry).next_hop.ifindex = 0;
            }
        }
    }
}

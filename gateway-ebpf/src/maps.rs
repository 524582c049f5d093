//! The maps shared with the agent. Names and value types come from `gateway-common`.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use gateway_common::{Counter, Endpoint, MAX_PUBLISHED};

/// Published servers, keyed by public endpoint: where to send traffic addressed to it.
#[map(name = "PUBLISH_DNAT")]
pub static PUBLISH_DNAT: HashMap<Endpoint, Endpoint> = HashMap::with_max_entries(MAX_PUBLISHED, 0);

/// The same servers keyed by private endpoint: which public endpoint their replies come from.
#[map(name = "PUBLISH_SNAT")]
pub static PUBLISH_SNAT: HashMap<Endpoint, Endpoint> = HashMap::with_max_entries(MAX_PUBLISHED, 0);

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

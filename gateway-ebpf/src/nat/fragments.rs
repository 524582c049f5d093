//! Fragments: the first carries the transport header and is translated as any packet; its
//! translation is remembered (`FRAGMENTS`) for the later ones, which have none.

use gateway_common::{
    FragmentKey, FragmentTranslation,
    outcome::{Dropped, Passed, Translated},
};
use network_types::ip::Ipv4Hdr;

use super::{
    Outcome,
    headers::{BPF_ANY, ETH_LEN, IP_CHECK, IP_DST, IP_SRC},
    masquerade::{in_networks, is_masquerade_address},
};
use crate::{
    maps::{FRAGMENTS, NAT_CONFIG},
    packet::{L4Check, Packet, ptr_at},
};

/// Remembers the addresses the first fragment of a datagram left with, for the later ones.
#[inline(always)]
pub(super) fn remember_fragment<P: Packet>(packet: &mut P, fragment: FragmentKey) {
    let Some(ip) = ptr_at::<P, Ipv4Hdr>(packet, ETH_LEN) else {
        return;
    };
    // SAFETY: bounds-checked by ptr_at.
    let translation = unsafe {
        FragmentTranslation {
            src: (*ip).src_addr,
            dst: (*ip).dst_addr,
        }
    };
    if translation.src != fragment.src || translation.dst != fragment.dst {
        let _ = FRAGMENTS.insert(fragment, translation, BPF_ANY);
    }
}

/// A fragment after the first gets its datagram's translation. One whose first fragment was
/// not seen (lost, or reordered behind it) is passed on only where it cannot leak: from an
/// inside network or to a masquerade address it would leave untranslated, so it is dropped
/// and counted, and the sender's reassembly timeout or retransmission takes over.
#[inline(always)]
pub(super) fn translate_later_fragment<P: Packet>(
    packet: &mut P,
    fragment: FragmentKey,
) -> Result<Translated, Outcome> {
    // SAFETY: map values are plain data and only read here.
    let Some(translation) = (unsafe { FRAGMENTS.get(fragment) }) else {
        let guarded = NAT_CONFIG
            .get(0)
            .filter(|config| config.address_count != 0)
            .is_some_and(|config| {
                in_networks(config, fragment.src) || is_masquerade_address(config, fragment.dst)
            });
        return Err(if guarded {
            Outcome::Drop(Dropped::FragmentUnknown)
        } else {
            Outcome::Stack(Passed::Fragment)
        });
    };
    let translation = *translation;
    let ip_check = ETH_LEN + IP_CHECK;
    if translation.src != fragment.src {
        packet
            .rewrite_addr(
                ETH_LEN + IP_SRC,
                ip_check,
                L4Check::Absent,
                fragment.src,
                translation.src,
            )
            .map_err(|_| Outcome::Drop(Dropped::RewriteFailed))?;
    }
    if translation.dst != fragment.dst {
        packet
            .rewrite_addr(
                ETH_LEN + IP_DST,
                ip_check,
                L4Check::Absent,
                fragment.dst,
                translation.dst,
            )
            .map_err(|_| Outcome::Drop(Dropped::RewriteFailed))?;
    }
    Ok(Translated::FragmentTranslated)
}

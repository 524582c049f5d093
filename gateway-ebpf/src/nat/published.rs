//! Published servers: stateless DNAT of traffic to their public endpoints, and SNAT of their
//! replies; published FTP control endpoints go to the agent.

use gateway_common::{
    Endpoint, NatConfig, Rewrite,
    outcome::{Dropped, Translated},
};

use super::{
    Outcome,
    ftp_control::punt_endpoint,
    hairpin::hairpin,
    headers::{Headers, rewrite},
    masquerade::{in_networks, is_masquerade_address},
    sessions::{now, session_hit},
};
use crate::{
    maps::{PUBLISH_DNAT, PUBLISH_SNAT},
    packet::Packet,
};

/// Translates a packet to a published server's public endpoint, or from its private one;
/// `None` when it is neither. `config`: the masquerade settings, when a masquerade is
/// configured (an inside client of a published server is hairpinned).
#[inline(always)]
pub(super) fn translate_published<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    config: Option<&NatConfig>,
) -> Option<Result<Translated, Outcome>> {
    let key = headers.key;
    let endpoint = Endpoint::new(key.dst, key.dst_port, key.proto);
    // SAFETY: map values are plain data and only read here.
    if let Some(private) = unsafe { PUBLISH_DNAT.get(endpoint) } {
        let private = *private;
        // An inside host reaching a published server through its public address (REQ-8):
        // the server must see (and answer) a public source, so the source is masqueraded too.
        if let Some(config) = config
            && in_networks(config, key.src)
        {
            // From outside, an inside source is a spoof, not a hairpin: masquerading it would
            // have the server answer a real inside host about a connection it never opened.
            if config.outside_ifindex != 0 && packet.ingress_ifindex() == config.outside_ifindex {
                return Some(Err(Outcome::Drop(Dropped::Spoofed)));
            }
            return Some(hairpin(packet, headers, config, endpoint, private));
        }
        if let Some(punt) = punt_endpoint(endpoint) {
            return Some(Err(punt));
        }
        return Some(
            rewrite(
                packet,
                headers,
                Rewrite::Destination,
                private.addr,
                private.port,
            )
            .map(|()| Translated::DnatPublished),
        );
    }
    let endpoint = Endpoint::new(key.src, key.src_port, key.proto);
    // SAFETY: as above.
    if let Some(public) = unsafe { PUBLISH_SNAT.get(endpoint) } {
        let public = *public;
        // A published server answering a hairpinned client: that connection's session says
        // both rewrites.
        if let Some(config) = config
            && is_masquerade_address(config, key.dst)
            && let Some(result) = session_hit(packet, headers, config, now())
        {
            return Some(result);
        }
        if let Some(punt) = punt_endpoint(endpoint) {
            return Some(Err(punt));
        }
        return Some(
            rewrite(packet, headers, Rewrite::Source, public.addr, public.port)
                .map(|()| Translated::SnatPublished),
        );
    }
    None
}

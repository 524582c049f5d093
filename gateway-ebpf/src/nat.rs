//! The translation itself, shared by the XDP and TC entry points.
//!
//! In order: published servers (stateless DNAT, and SNAT of their replies); then the session
//! table (masqueraded connections, both directions); then new masqueraded connections from the
//! inside networks; then outside traffic to a masquerade address, which a mapping may admit
//! and is otherwise dropped as unsolicited. Everything else goes to the kernel untouched.
//! Drops are counted by reason; nothing is dropped silently.
//!
//! One concern per file, in Cilium's manner: `headers` (parsing and rewriting), `published`,
//! `ftp_control` (what goes to the agent), `control_ack` (what of it need not), `hairpin`, `sessions`, `expectations`,
//! `masquerade`, `icmp_errors`, `fragments`. Every step returns an [`Outcome`] (or a translation, which is `Outcome::Forward`). Everything is
//! `#[inline(always)]`: the translation is one frame on the entry's stack, as before the split.

mod control_ack;
mod expectations;
mod fragments;
mod ftp_control;
mod hairpin;
mod headers;
mod icmp_errors;
mod masquerade;
mod published;
mod sessions;
mod sync_events;

use gateway_common::{
    IPPROTO_TCP, PuntReason,
    outcome::{Dropped, Passed, Translated},
    tcp,
};

use self::{
    control_ack::forward_control_ack,
    expectations::use_expectation,
    fragments::{remember_fragment, translate_later_fragment},
    ftp_control::is_ftp_control_port,
    headers::{ETH_LEN, Headers, Parsed, parse},
    icmp_errors::translate_icmp_error,
    masquerade::{admit_inbound, in_networks, is_masquerade_address, masquerade_new},
    published::translate_published,
    sessions::{now, session_hit},
};
use crate::{
    maps::{NAT_CONFIG, count},
    packet::Packet,
    scratch::Quote,
};

/// What the translation did with a packet. The program's verdict follows from the variant
/// alone (`main.rs` matches every one), and each variant carries only counters of its own
/// kind: a drop reason is a `Dropped`, so nothing can end up passed that was meant dropped.
#[derive(Clone, Copy)]
pub enum Outcome {
    /// Translated: forward it (from BPF where the hook can, else through the stack).
    Forward(Translated),
    /// Continue into the kernel's stack, untouched.
    Stack(Passed),
    Drop(Dropped),
    /// A packet of an FTP control connection, for the agent, with why: the entry point hands
    /// it over by its hook's transport (`punt.rs`), which counts it, and it goes no further.
    Punt(PuntReason),
}

/// Translates the packet in place. `quote` receives the head of the packet as it arrived,
/// for the ICMP error forwarding may have to send instead of it, or for handing the stack the
/// packet as it arrived. Counts the outcome, except a punt (its transport counts it: Punted,
/// or DropPuntFailed when it has no room).
#[inline(always)]
pub fn translate<P: Packet>(packet: &mut P, quote: Option<&mut Quote>) -> Outcome {
    let outcome = match try_translate(packet, quote) {
        Ok(translated) => Outcome::Forward(translated),
        Err(outcome) => outcome,
    };
    match outcome {
        Outcome::Forward(translated) => count(translated.counter()),
        Outcome::Stack(passed) => count(passed.counter()),
        Outcome::Drop(dropped) => count(dropped.counter()),
        Outcome::Punt(_) => {}
    }
    outcome
}

/// The translation the packet got; any other outcome (passed, dropped, punted) ends the
/// translation early, as the error.
#[inline(always)]
fn try_translate<P: Packet>(
    packet: &mut P,
    quote: Option<&mut Quote>,
) -> Result<Translated, Outcome> {
    let headers = match parse(packet)? {
        Parsed::Packet(headers) => headers,
        Parsed::LaterFragment(fragment) => return translate_later_fragment(packet, fragment),
    };
    // Never an ICMP error: the gateway must not answer one with another.
    if let Some(quote) = quote
        && !headers.icmp_error
    {
        quote.take(packet, headers.l4 - ETH_LEN);
    }
    let mut result = translate_headers(packet, &headers);
    // A pure ACK of a control connection the agent has described needs no judging: forwarded
    // here, it saves the agent a wake-up and a send.
    if let Err(Outcome::Punt(_)) = result
        && let Some(forwarded) = forward_control_ack(packet, &headers)
    {
        result = forwarded;
    }
    if let (Ok(_), Some(fragment)) = (&result, headers.first_fragment) {
        remember_fragment(packet, fragment);
    }
    result
}

/// Translates a packet with its transport header.
#[inline(always)]
fn translate_headers<P: Packet>(packet: &mut P, headers: &Headers) -> Result<Translated, Outcome> {
    if headers.icmp_error {
        return translate_icmp_error(packet, headers);
    }
    let key = headers.key;

    let settings = NAT_CONFIG.get(0);
    // Masquerade settings, when a masquerade is configured.
    let config = settings.filter(|config| config.address_count != 0);
    // Published servers: stateless, both directions.
    if let Some(result) = translate_published(packet, headers, config) {
        return result;
    }

    // Sessions exist without masquerade too (data connections of published FTP servers).
    let Some(settings) = settings else {
        return Err(Outcome::Stack(Passed::Unmatched));
    };
    let now = now();
    if let Some(result) = session_hit(packet, headers, settings, now) {
        return result;
    }
    if key.proto == IPPROTO_TCP
        && tcp::opens_connection(headers.tcp_flags)
        && let Some(result) = use_expectation(packet, headers, settings, now)
    {
        return result;
    }
    let Some(config) = config else {
        return Err(Outcome::Stack(Passed::Unmatched));
    };

    let ingress = packet.ingress_ifindex();
    let inside = config.inside_ifindex == 0 || ingress == config.inside_ifindex;
    let outside = config.outside_ifindex == 0 || ingress == config.outside_ifindex;
    if in_networks(config, key.src) {
        if config.outside_ifindex != 0 && ingress == config.outside_ifindex {
            return Err(Outcome::Drop(Dropped::Spoofed));
        }
        if inside && !in_networks(config, key.dst) {
            if is_ftp_control_port(config, key.proto, key.dst_port) {
                return Err(Outcome::Punt(PuntReason::MasqueradeFromClient));
            }
            return masquerade_new(packet, headers, config, now);
        }
    }
    if outside && is_masquerade_address(config, key.dst) {
        // (The gateway's own FTP client, if any, keeps its connections.)
        if is_ftp_control_port(config, key.proto, key.src_port) && !packet.local_socket_exists(&key)
        {
            return Err(Outcome::Punt(PuntReason::MasqueradeFromServer));
        }
        return admit_inbound(packet, headers, config, now);
    }
    Err(Outcome::Stack(Passed::Unmatched))
}

//! The fast path's counters (the `STATS` array), declared once.

use crate::outcome;

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
        /// A pure ACK of an FTP control connection forwarded by the program through the
        /// connection's `CONTROL_ACKS` entry instead of punted to the agent.
        AlgAckForwarded = 39, "alg_ack_forwarded", Translated;
        /// A change event the HA sync's ring had no room for: the agent makes it good with a
        /// full walk of the tables.
        SyncEventLost = 40, "sync_event_lost", Besides;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_dense_and_named() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
            assert!(!counter.name().is_empty());
        }
    }
}

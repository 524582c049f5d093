//! What the translation did with a packet, by kind, each kind with the counters it may end
//! in. The fast path's `Outcome` (gateway-ebpf `nat.rs`) carries one of these, and the
//! program's verdict follows from which kind it is: a drop reason can only be a `Dropped`,
//! which only ever drops, so a new drop counter cannot let a packet through untranslated.

use crate::Counter;

/// Declares a kind of outcome: a fieldless enum whose variants name their counter, with
/// `ALL` and `counter()` generated from the one list.
macro_rules! outcome_kind {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $counter:ident,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The counter a packet with this outcome is counted in.
            #[inline(always)]
            pub const fn counter(self) -> Counter {
                match self {
                    $($name::$variant => Counter::$counter,)+
                }
            }
        }
    };
}

outcome_kind! {
    /// Translated: the packet goes on (forwarded by the program where the hook can, else
    /// through the stack).
    Translated {
        DnatPublished => DnatPublished,
        SnatPublished => SnatPublished,
        SessionHit => SessionHit,
        SessionCreated => SessionCreated,
        IcmpErrorTranslated => IcmpErrorTranslated,
        HairpinCreated => HairpinCreated,
        FragmentTranslated => FragmentTranslated,
        ExpectationUsed => ExpectationUsed,
        ControlAck => AlgAckForwarded,
    }
}

outcome_kind! {
    /// Not the fast path's: the kernel's stack gets the packet untouched.
    Passed {
        NotIpv4 => PassNotIpv4,
        Malformed => PassMalformed,
        Fragment => PassFragment,
        Unmatched => PassUnmatched,
    }
}

outcome_kind! {
    /// Dropped, counted by reason.
    Dropped {
        RewriteFailed => DropRewriteFailed,
        PortExhausted => DropPortExhausted,
        SessionTableFull => DropSessionTableFull,
        Unsolicited => DropUnsolicited,
        FragmentUnknown => DropFragmentUnknown,
        Spoofed => DropSpoofed,
        /// Counted by the punt transports (`punt.rs`), not by the translation.
        PuntFailed => DropPuntFailed,
    }
}

/// Which kind of counter a [`Counter`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    /// The packet's verdict: translated (a [`Translated`]).
    Translated,
    /// The packet's verdict: the stack gets it untouched (a [`Passed`]).
    Passed,
    /// The packet's verdict: dropped (a [`Dropped`]).
    Dropped,
    /// The packet's verdict: handed to the agent.
    Punted,
    /// Counted in addition to a verdict counter (what became of a translated packet next, a
    /// session or expectation found expired).
    Besides,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every counter is classified (`Counter::kind` has no fallback), and each verdict
    /// counter belongs to exactly one outcome of its kind: a drop counter can only be
    /// reached through `Dropped`, whose verdict is a drop.
    #[test]
    fn every_verdict_counter_has_exactly_one_outcome_of_its_kind() {
        for counter in Counter::ALL {
            let translated = Translated::ALL
                .iter()
                .filter(|outcome| outcome.counter() == counter)
                .count();
            let passed = Passed::ALL
                .iter()
                .filter(|outcome| outcome.counter() == counter)
                .count();
            let dropped = Dropped::ALL
                .iter()
                .filter(|outcome| outcome.counter() == counter)
                .count();
            let expected = match counter.kind() {
                CounterKind::Translated => (1, 0, 0),
                CounterKind::Passed => (0, 1, 0),
                CounterKind::Dropped => (0, 0, 1),
                CounterKind::Punted | CounterKind::Besides => (0, 0, 0),
            };
            assert_eq!((translated, passed, dropped), expected, "{counter:?}");
            // The names say the kind: whoever adds a `drop_` counter must make it a drop.
            let name = counter.name();
            assert_eq!(
                name.starts_with("drop_"),
                counter.kind() == CounterKind::Dropped,
                "{name}"
            );
            assert_eq!(
                name.starts_with("pass_"),
                counter.kind() == CounterKind::Passed,
                "{name}"
            );
        }
    }

    #[test]
    fn outcomes_count_in_their_own_kind() {
        for outcome in Translated::ALL {
            assert_eq!(outcome.counter().kind(), CounterKind::Translated);
        }
        for outcome in Passed::ALL {
            assert_eq!(outcome.counter().kind(), CounterKind::Passed);
        }
        for outcome in Dropped::ALL {
            assert_eq!(outcome.counter().kind(), CounterKind::Dropped);
        }
    }
}

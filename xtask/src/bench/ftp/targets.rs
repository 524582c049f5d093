//! The verdicts on the targets of the issue that put the ALG's control path at kernel speed,
//! decided from the FTP runs' numbers.

/// A setup's sessions/s against Linux's in the same runs.
#[derive(Clone, Copy)]
pub(super) struct Bound {
    pub(super) ratio: f64,
    /// Whether the runs' ranges of the two overlap.
    pub(super) ranges_overlap: bool,
}

impl Bound {
    /// The sessions/s target: at least 1.15x Linux's with the ranges apart.
    fn meets_kernel_speed(self) -> bool {
        self.ratio >= 1.15 && !self.ranges_overlap
    }

    fn describe(self) -> String {
        let apart = if self.ranges_overlap {
            "the ranges overlap"
        } else {
            "the ranges apart"
        };
        format!("{:.2}x, {apart}", self.ratio)
    }
}

/// The verdicts on the targets of the issue that put the ALG's control path at kernel
/// speed: sessions/s at least 1.15x Linux's with the runs' ranges apart, and the 227's
/// added transit at most 20 / 50 us (p50 / p99) alone and 100 us (p99) loaded. `plain`
/// (forwarding without NAT) says whether the sessions/s target is within any NAT's reach
/// on this machine at all: when plain forwarding misses it, the runs' noise decides it.
pub(super) fn kernel_speed_targets(
    gateway: Bound,
    plain: Bound,
    (quiet_p50, quiet_p99): (f64, f64),
    loaded_p99: f64,
) -> String {
    let verdict = |met: bool| if met { "met" } else { "missed" };
    let reach = if plain.meets_kernel_speed() {
        format!(
            "plain forwarding (no NAT, the most any NAT could reach here) meets it ({})",
            plain.describe()
        )
    } else {
        format!(
            "plain forwarding (no NAT, the most any NAT could reach here) misses it too ({}): on this machine the runs' spread, not the NAT, decides that target",
            plain.describe()
        )
    };
    format!(
        "Targets (FTP control path at kernel speed): FTP sessions/s >= 1.15x Linux with the ranges apart: {} ({}; {reach}); the 227's added transit alone p50 <= 20 us and p99 <= 50 us: {} ({quiet_p50:.0} / {quiet_p99:.0} us); loaded p99 <= 100 us: {} ({loaded_p99:.0} us). Where the time goes: the agent's counters and profile above (wake-up and context switch per punted packet, not the ALG's own work).",
        verdict(gateway.meets_kernel_speed()),
        gateway.describe(),
        verdict(quiet_p50 <= 20.0 && quiet_p99 <= 50.0),
        verdict(loaded_p99 <= 100.0),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_speed_targets_are_decided_from_the_numbers() {
        use super::{Bound, kernel_speed_targets};
        let bound = |ratio, ranges_overlap| Bound {
            ratio,
            ranges_overlap,
        };
        let met = kernel_speed_targets(bound(1.2, false), bound(1.4, false), (15.0, 45.0), 90.0);
        assert!(!met.contains("missed"), "{met}");
        assert!(met.contains("meets it (1.40x, the ranges apart)"), "{met}");
        let overlapping =
            kernel_speed_targets(bound(1.2, true), bound(1.4, false), (15.0, 45.0), 90.0);
        assert!(
            overlapping.contains("Linux with the ranges apart: missed (1.20x, the ranges overlap"),
            "{overlapping}"
        );
        let slow =
            kernel_speed_targets(bound(0.84, true), bound(1.33, true), (97.0, 700.0), 1163.0);
        assert_eq!(slow.matches("missed").count(), 3, "{slow}");
        assert!(
            slow.contains("misses it too (1.33x, the ranges overlap)"),
            "{slow}"
        );
    }
}

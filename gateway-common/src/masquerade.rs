//! The rules of masquerade allocation that the fast path (`gateway-ebpf`, `nat/masquerade.rs`)
//! and the agent (`gateway-user`, the FTP ALG's mappings and claimed data ports) must agree
//! on: a private address gets the same public address whichever of them maps it, and both
//! try the same sequence of ports.

/// Which of the `address_count` masquerade addresses the private address `private` is mapped
/// to: a hash of the address alone, so that all of an inside host's connections leave from
/// one public address ("paired" pooling, RFC 4787 REQ-2).
#[inline(always)]
pub fn public_address_index(private: [u8; 4], address_count: u32) -> usize {
    (u32::from_ne_bytes(private) % address_count.max(1)) as usize
}

/// The public ports tried for a new mapping, in `[min, max]`: the private port itself when it
/// is in the range (first try only), else random ports in the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortCandidates {
    min: u32,
    span: u32,
    preferred: u32,
    preferred_in_range: bool,
}

impl PortCandidates {
    #[inline(always)]
    pub fn new(min: u16, max: u16, preferred: u16) -> Self {
        let (min, max, preferred) = (min as u32, max as u32, preferred as u32);
        PortCandidates {
            min,
            span: max.saturating_sub(min) + 1,
            preferred,
            preferred_in_range: preferred >= min && preferred <= max,
        }
    }

    /// The port of try `attempt` (0-based, below [`crate::PORT_ALLOCATION_TRIES`]); `random` is called
    /// only for a random one.
    #[inline(always)]
    pub fn candidate(&self, attempt: u32, random: impl FnOnce() -> u32) -> u16 {
        if attempt == 0 && self.preferred_in_range {
            self.preferred as u16
        } else {
            (self.min + random() % self.span) as u16
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inside_host_keeps_its_public_address() {
        let addresses = 3;
        let index = public_address_index([10, 0, 0, 7], addresses);
        assert!(index < 3);
        assert_eq!(public_address_index([10, 0, 0, 7], addresses), index);
        // No addresses configured: index 0, which the callers' bounds checks refuse.
        assert_eq!(public_address_index([10, 0, 0, 7], 0), 0);
        // The hash is of the address in memory order (as both sides read it from a packet).
        assert_eq!(
            public_address_index([1, 0, 0, 0], 7),
            (u32::from_ne_bytes([1, 0, 0, 0]) % 7) as usize
        );
    }

    #[test]
    fn the_private_port_is_tried_first_when_in_range_then_random_ones() {
        let candidates = PortCandidates::new(1024, 1031, 1030);
        assert_eq!(candidates.candidate(0, || panic!("not random")), 1030);
        assert_eq!(candidates.candidate(1, || 13), 1024 + 13 % 8);
        let outside = PortCandidates::new(1024, 1031, 80);
        assert_eq!(outside.candidate(0, || 3), 1027);
        for random in [0, 7, 8, u32::MAX] {
            let port = outside.candidate(5, || random);
            assert!((1024..=1031).contains(&port), "{port}");
        }
        // The whole port space.
        let all = PortCandidates::new(0, u16::MAX, 0);
        assert_eq!(all.candidate(1, || u32::MAX), u16::MAX);
    }
}

//! Types shared by the BPF fast path (`gateway-ebpf`) and the agent (`gateway-user`).
//!
//! Everything here is `#[repr(C)]` and lays out exactly as the BPF side sees it. Multi-byte
//! packet fields are kept as byte arrays in network order, as they stand in the packet, so
//! neither side ever has to wonder which byte order a field is in.
#![no_std]

pub mod checksum;
pub mod control_ack;
#[macro_use]
pub mod wire;
pub mod counters;
pub mod expectation;
pub mod fragment;
pub mod icmp;
pub mod masquerade;
pub mod nat_config;
pub mod outcome;
pub mod published;
pub mod punt;
pub mod session;
pub mod sync_event;
pub mod tcp;

// The map types by their old paths (`gateway_common::FlowKey`): both sides name them so.
pub use counters::*;
pub use expectation::*;
pub use fragment::*;
pub use nat_config::*;
pub use published::*;
pub use punt::*;
pub use session::*;

/// IANA protocol numbers of the transports the fast path translates.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Names of the maps and programs in the BPF object, shared so that neither side can drift.
pub mod names {
    pub const PUBLISH_DNAT: &str = "PUBLISH_DNAT";
    pub const PUBLISH_SNAT: &str = "PUBLISH_SNAT";
    pub const STATS: &str = "STATS";
    pub const SESSIONS: &str = "SESSIONS";
    pub const MASQ_BY_PRIVATE: &str = "MASQ_BY_PRIVATE";
    pub const MASQ_BY_PUBLIC: &str = "MASQ_BY_PUBLIC";
    pub const MASQ_PEERS: &str = "MASQ_PEERS";
    pub const EXPECTATIONS: &str = "EXPECTATIONS";
    pub const NAT_CONFIG: &str = "NAT_CONFIG";
    pub const PROG_XDP: &str = "gateway_xdp";
    pub const PROG_TC: &str = "gateway_tc";
    pub const PUNT: &str = "PUNT";
    pub const PUNT_ENDPOINTS: &str = "PUNT_ENDPOINTS";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const LAYOUT: &str = "LAYOUT";
    pub const REDIRECT_PORTS: &str = "REDIRECT_PORTS";
    pub const PUNT_TAP: &str = "PUNT_TAP";
    pub const PUNT_TAP_XDP: &str = "PUNT_TAP_XDP";
    pub const CONTROL_ACKS: &str = "CONTROL_ACKS";
    pub const SYNC_EVENTS: &str = "SYNC_EVENTS";
    /// Every map of the object: what `[dataplane] pin_path` pins, and a restarted agent
    /// adopts.
    pub const ALL_MAPS: [&str; 18] = [
        PUBLISH_DNAT,
        PUBLISH_SNAT,
        STATS,
        SESSIONS,
        MASQ_BY_PRIVATE,
        MASQ_BY_PUBLIC,
        MASQ_PEERS,
        EXPECTATIONS,
        NAT_CONFIG,
        PUNT,
        PUNT_ENDPOINTS,
        FRAGMENTS,
        LAYOUT,
        REDIRECT_PORTS,
        PUNT_TAP,
        PUNT_TAP_XDP,
        CONTROL_ACKS,
        SYNC_EVENTS,
    ];
}

/// The version of everything the maps hold: key and value layouts and their meaning. Bumped
/// whenever any of them changes, so that an agent never adopts pinned maps of another layout
/// (it refuses, and says how to start fresh). Stored in the `LAYOUT` map.
pub const LAYOUT_VERSION: u32 = 5;

/// Interfaces in `REDIRECT_PORTS` (the gateway attaches to two; room for more).
pub const MAX_REDIRECT_PORTS: u32 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_layouts_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 16);
        assert_eq!(core::mem::size_of::<Session>(), 40);
        assert_eq!(core::mem::size_of::<ExpectationKey>(), 12);
        assert_eq!(core::mem::size_of::<ExpectationEntry>(), 24);
        assert_eq!(PUNT_HEADER_LEN, 16);
        // Changing any of these sizes (or a field's meaning) needs a LAYOUT_VERSION bump.
        assert_eq!(core::mem::size_of::<NatConfig>(), 184);
        assert_eq!(core::mem::size_of::<PeerKey>(), 12);
        assert_eq!(LAYOUT_VERSION, 5);
        // Version 5: `SYNC_EVENTS`, `NatConfig::sync_events` and its lost-event counter.
        // Version 4: `CONTROL_ACKS` and its counter. Version 3: the hairpin expectations'
        // source, and the counters of the route lookup
        // and the ICMP errors (STATS grew).
        assert_eq!(core::mem::offset_of!(ExpectationEntry, source), 12);
        assert_eq!(Counter::COUNT, 41);
        assert_eq!(core::mem::size_of::<control_ack::ControlAck>(), 52);
        let mut names = names::ALL_MAPS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), names::ALL_MAPS.len());
        assert_eq!(
            core::mem::offset_of!(NatConfig, tcp_established_timeout_ns) % 8,
            0
        );
        let key = FlowKey {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            src_port: [0, 9],
            dst_port: [0, 10],
            proto: 6,
            _pad: [0; 3],
        };
        assert_eq!(key.reversed().reversed(), key);
        assert_eq!(key.reversed().src, [5, 6, 7, 8]);
        let net = Ipv4Cidr {
            addr: [10, 0, 0, 0],
            mask: [255, 255, 255, 0],
        };
        assert!(net.contains([10, 0, 0, 77]) && !net.contains([10, 0, 1, 1]));
    }

    #[test]
    fn wire_enums_read_back_what_was_written_and_refuse_the_rest() {
        for &reason in PuntReason::ALL {
            assert_eq!(PuntReason::try_from(reason as u8), Ok(reason));
        }
        for &rewrite in Rewrite::ALL {
            assert_eq!(Rewrite::try_from(rewrite as u8), Ok(rewrite));
        }
        for &filtering in Filtering::ALL {
            assert_eq!(Filtering::try_from(filtering as u32), Ok(filtering));
        }
        assert_eq!(
            PuntReason::try_from(0),
            Err(wire::UnknownValue {
                what: "PuntReason",
                value: 0
            })
        );
        assert!(Rewrite::try_from(4).is_err());
        assert!(Filtering::try_from(3).is_err());
    }
}

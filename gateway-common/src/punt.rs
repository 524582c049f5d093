//! Punting control-connection packets to the agent: the ring record's head, the tap frame's
//! metadata, and why a packet was punted.

use crate::MAX_PUBLISHED;

wire_enum! {
    /// Why a packet was punted: which side of which kind of FTP control connection sent it
    /// (the value of `PUNT_ENDPOINTS`, and of punt records and frames).
    pub enum PuntReason: u8 {
        /// From an outside client to a published server's public control endpoint.
        PublishedFromClient = 1,
        /// From a published server's private control endpoint.
        PublishedFromServer = 2,
        /// From a masqueraded inside client to an outside server's control port.
        MasqueradeFromClient = 3,
        /// From an outside server's control port to a masquerade address.
        MasqueradeFromServer = 4,
        /// From an inside client to a published server's public control endpoint
        /// (hairpinning): the server must see the client at its masquerade mapping. The
        /// server's side arrives as `PublishedFromServer`.
        HairpinFromClient = 5,
    }
}

/// The head of a punt ring record; the IPv4 packet (from its IP header on) follows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PuntHeader {
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// Bytes of the IPv4 packet that follow the header.
    pub len: u32,
    /// A [`PuntReason`].
    pub reason: u8,
    pub _pad: [u8; 3],
    /// When the packet was punted: the low 32 bits of `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    /// Enough for the agent to measure how long records wait in the ring (wrapping, under
    /// 4.29 s), in the header's 16 bytes.
    pub punted_ns_low: u32,
}

/// Punt records come in two sizes, chosen per packet, so that the common small segment does
/// not take a 64 KiB slot: `PUNT_SMALL_DATA` bytes of packet (an MTU-sized frame) or
/// `PUNT_LARGE_DATA` (the largest IPv4 packet: GSO/GRO super-packets of a control
/// connection).
pub const PUNT_SMALL_DATA: usize = 2048;
pub const PUNT_LARGE_DATA: usize = 65536;
pub const PUNT_HEADER_LEN: usize = core::mem::size_of::<PuntHeader>();
/// Bytes of the punt ring: 256 small records or 63 large ones in flight. When the agent
/// falls behind, further control packets are dropped (`DropPuntFailed`) and retransmitted.
pub const PUNT_RING_BYTES: u32 = 1 << 22;

/// Punt over the agent's TAP device (`PUNT_TAP`): the TC program overwrites the Ethernet
/// header of a punted frame with this metadata and redirects the frame to the tap, whose
/// reader is the agent. The original MAC addresses are of no use to the agent (it sends
/// through a raw IPv4 socket and the kernel resolves the next hop); the EtherType stays, so
/// that tools reading the tap still see IPv4.
///
/// Layout, over the 14 bytes of the Ethernet header:
/// `[0..4]` `punted_ns_low` (native order, as in [`PuntHeader`]), `[4..8]` ingress ifindex
/// (native order), `[8]` reason, `[9..12]` [`punt_frame::MAGIC`], `[12..14]` EtherType.
pub mod punt_frame {
    /// Marks a frame the fast path wrote: whatever else reaches the tap (nothing should: it
    /// has no address and IPv6 is off on it) is not taken for a punted packet.
    pub const MAGIC: [u8; 3] = *b"GWP";
    /// Bytes the program writes: the Ethernet header up to its EtherType.
    pub const META_LEN: usize = 12;
    pub const ETH_LEN: usize = 14;
    const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
    const ETHERTYPE_VLAN: [[u8; 2]; 2] = [[0x81, 0x00], [0x88, 0xa8]];

    /// What the agent learns of a punted frame besides the packet.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct Meta {
        pub punted_ns_low: u32,
        pub ifindex: u32,
        pub reason: u8,
    }

    impl Meta {
        #[inline(always)]
        pub fn encode(&self) -> [u8; META_LEN] {
            let time = self.punted_ns_low.to_ne_bytes();
            let ifindex = self.ifindex.to_ne_bytes();
            [
                time[0],
                time[1],
                time[2],
                time[3],
                ifindex[0],
                ifindex[1],
                ifindex[2],
                ifindex[3],
                self.reason,
                MAGIC[0],
                MAGIC[1],
                MAGIC[2],
            ]
        }
    }

    /// The metadata of a frame read from the tap and where its IPv4 packet starts; `None`
    /// for a frame the fast path did not write, or one that carries no IPv4 packet. A frame
    /// whose skb had its VLAN tag in metadata (a NIC's VLAN offload) gets the tag back in
    /// front of the EtherType when the tap hands it out: it is skipped.
    pub fn decode(frame: &[u8]) -> Option<(Meta, usize)> {
        let head = frame.get(..ETH_LEN)?;
        if head[9..12] != MAGIC {
            return None;
        }
        let word =
            |at: usize| u32::from_ne_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        let meta = Meta {
            punted_ns_low: word(0),
            ifindex: word(4),
            reason: head[8],
        };
        let mut ethertype_at = 12;
        if ETHERTYPE_VLAN
            .iter()
            .any(|tag| frame.get(12..14) == Some(tag))
        {
            ethertype_at = 16;
        }
        (frame.get(ethertype_at..ethertype_at + 2)? == ETHERTYPE_IPV4)
            .then_some((meta, ethertype_at + 2))
    }
}

/// Published FTP control endpoints (`alg = "ftp"`), public and private: the key of
/// `PUNT_ENDPOINTS`, whose value is the [`PuntReason`] of packets addressed to (public) or
/// sent from (private) that endpoint.
pub const MAX_PUNT_ENDPOINTS: u32 = 2 * MAX_PUBLISHED;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punt_frame_metadata_round_trips_and_foreign_frames_are_refused() {
        let meta = punt_frame::Meta {
            punted_ns_low: 0xdead_beef,
            ifindex: 7,
            reason: PuntReason::MasqueradeFromServer as u8,
        };
        let mut frame = [0u8; 40];
        frame[..punt_frame::META_LEN].copy_from_slice(&meta.encode());
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        assert_eq!(punt_frame::decode(&frame), Some((meta, 14)));
        // A VLAN tag the tap put back in front of the EtherType.
        let mut tagged = [0u8; 44];
        tagged[..12].copy_from_slice(&frame[..12]);
        tagged[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged[16..18].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(punt_frame::decode(&tagged), Some((meta, 18)));
        // Not IPv4, not ours (real MAC addresses), too short.
        let mut arp = frame;
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(punt_frame::decode(&arp), None);
        let mut foreign = frame;
        foreign[9..12].copy_from_slice(&[0x02, 0x42, 0xac]);
        assert_eq!(punt_frame::decode(&foreign), None);
        assert_eq!(punt_frame::decode(&frame[..13]), None);
    }
}

//! Punted packets, from the bytes the agent reads to the packets it builds from them.

use gateway_common::{IPPROTO_TCP, checksum, punt_frame};
use gateway_user::alg::{packet::TcpPacket, shell};

/// Longest TCP option list: a data offset of 15 words.
const MAX_OPTIONS: usize = 40;

/// What the agent reads, through the decoding and [`TcpPacket::parse`] it runs: the first
/// byte picks a frame as the punt tap delivers it (the fast path's metadata over the Ethernet
/// header, then the IPv4 packet), a punt ring record, or a bare IPv4 packet with its checksums
/// made right (so that inputs get past them to the TCP header and options). Nothing may
/// panic. A packet that parses builds back to the same packet, and so does one whose SACK
/// blocks are rewritten (as the agent sends segments on: the blocks its sequence map gives,
/// any number of them), which keeps its options within a TCP header.
pub fn punted_packet(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let repaired;
    let bytes = match mode % 3 {
        0 => match punt_frame::decode(data) {
            Some((_, at)) => &data[at..],
            None => return,
        },
        1 => match shell::decode(data) {
            Some(punted) => punted.packet,
            None => return,
        },
        _ => {
            repaired = with_checksums(data);
            &repaired[..]
        }
    };
    let Ok(packet) = TcpPacket::parse(bytes) else {
        return;
    };
    let _ = (packet.mss(), packet.window_scale());
    assert_eq!(TcpPacket::parse(&packet.build()), Ok(packet.clone()));

    // Blocks as the sequence map may give them: the packet's own, then more from the
    // payload.
    let mut sack = packet.sack();
    let extra = usize::from(mode >> 2);
    sack.extend(
        packet
            .payload
            .chunks_exact(8)
            .take(extra)
            .map(|block| (word(&block[..4]), word(&block[4..]))),
    );
    let mut rewritten = packet.clone();
    rewritten.set_sack(&sack);
    assert!(
        rewritten.options.len() <= MAX_OPTIONS && rewritten.options.len() % 4 == 0,
        "options {:?}",
        rewritten.options
    );
    let written = rewritten.sack();
    assert_eq!(
        written[..],
        sack[..written.len()],
        "the first blocks, in order"
    );
    assert_eq!(TcpPacket::parse(&rewritten.build()), Ok(rewritten));
}

fn word(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// `data` with its IPv4 header checksum and TCP checksum set, where its lengths allow.
fn with_checksums(data: &[u8]) -> Vec<u8> {
    let mut bytes = data.to_vec();
    let Some(&first) = bytes.first() else {
        return bytes;
    };
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 || ihl > bytes.len() {
        return bytes;
    }
    let header = checksum::ipv4_header(&bytes[..ihl]);
    bytes[10..12].copy_from_slice(&header.to_be_bytes());
    let total = usize::from(u16::from_be_bytes([bytes[2], bytes[3]])).min(bytes.len());
    if total < ihl + 20 {
        return bytes;
    }
    let src = [bytes[12], bytes[13], bytes[14], bytes[15]];
    let dst = [bytes[16], bytes[17], bytes[18], bytes[19]];
    let tcp = checksum::ipv4_transport(src, dst, IPPROTO_TCP, &bytes[ihl..total], 16);
    bytes[ihl + 16..ihl + 18].copy_from_slice(&tcp.to_be_bytes());
    bytes
}

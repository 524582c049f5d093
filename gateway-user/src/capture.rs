//! pcap (the classic libpcap format) of the ALG's packets, for `gateway capture`: IPv4 packets
//! with no link header (`LINKTYPE_RAW`), readable by tcpdump and Wireshark.

use std::time::{SystemTime, UNIX_EPOCH};

const MAGIC_MICROSECONDS: u32 = 0xa1b2_c3d4;
const LINKTYPE_RAW: u32 = 101;
const SNAPLEN: u32 = 65535;

/// The file's global header, in this machine's byte order (readers detect it by the magic).
pub fn file_header() -> Vec<u8> {
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(&MAGIC_MICROSECONDS.to_ne_bytes());
    header.extend_from_slice(&2u16.to_ne_bytes());
    header.extend_from_slice(&4u16.to_ne_bytes());
    header.extend_from_slice(&0i32.to_ne_bytes());
    header.extend_from_slice(&0u32.to_ne_bytes());
    header.extend_from_slice(&SNAPLEN.to_ne_bytes());
    header.extend_from_slice(&LINKTYPE_RAW.to_ne_bytes());
    header
}

/// One packet record.
pub fn record(when: SystemTime, packet: &[u8]) -> Vec<u8> {
    let since = when.duration_since(UNIX_EPOCH).unwrap_or_default();
    let kept = packet.len().min(SNAPLEN as usize);
    let mut record = Vec::with_capacity(16 + kept);
    record.extend_from_slice(&(since.as_secs() as u32).to_ne_bytes());
    record.extend_from_slice(&since.subsec_micros().to_ne_bytes());
    record.extend_from_slice(&(kept as u32).to_ne_bytes());
    record.extend_from_slice(&(packet.len() as u32).to_ne_bytes());
    record.extend_from_slice(&packet[..kept]);
    record
}

/// Splits a pcap byte stream into its packets (for tests and tools); `None` if malformed.
pub fn packets(file: &[u8]) -> Option<Vec<&[u8]>> {
    let magic = u32::from_ne_bytes(file.get(..4)?.try_into().ok()?);
    if magic != MAGIC_MICROSECONDS {
        return None;
    }
    let mut rest = file.get(24..)?;
    let mut packets = Vec::new();
    while !rest.is_empty() {
        let kept = u32::from_ne_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
        packets.push(rest.get(16..16 + kept)?);
        rest = &rest[16 + kept..];
    }
    Some(packets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut file = file_header();
        file.extend(record(SystemTime::now(), &[0x45, 0, 0, 20]));
        file.extend(record(SystemTime::now(), &[0x45, 1]));
        assert_eq!(
            packets(&file).unwrap(),
            vec![&[0x45u8, 0, 0, 20][..], &[0x45, 1][..]]
        );
        assert!(packets(&file[..30]).is_none());
    }
}

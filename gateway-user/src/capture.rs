//! pcap (the classic libpcap format) of the ALG's packets, for `gateway capture`: IPv4 packets
//! with no link header (`LINKTYPE_RAW`), readable by tcpdump and Wireshark. The format is
//! `pcap-file`'s; this module only says which header and how records are cut.

use std::time::{SystemTime, UNIX_EPOCH};

use byteorder_slice::byteorder::NativeEndian;
use pcap_file::{
    DataLink, Endianness, TsResolution,
    pcap::{PcapHeader, PcapPacket, PcapParser},
};

const SNAPLEN: u32 = 65535;

fn header() -> PcapHeader {
    PcapHeader {
        snaplen: SNAPLEN,
        datalink: DataLink::RAW,
        ts_resolution: TsResolution::MicroSecond,
        // This machine's byte order, as the records: readers detect it by the magic.
        endianness: Endianness::native(),
        ..PcapHeader::default()
    }
}

/// The file's global header.
pub fn file_header() -> Vec<u8> {
    let mut bytes = Vec::with_capacity(24);
    // Writing the fixed header to a Vec cannot fail.
    let _ = header().write_to(&mut bytes);
    bytes
}

/// One packet record; a packet past the snap length is cut to it.
pub fn record(when: SystemTime, packet: &[u8]) -> Vec<u8> {
    let since = when.duration_since(UNIX_EPOCH).unwrap_or_default();
    let kept = &packet[..packet.len().min(SNAPLEN as usize)];
    let original = u32::try_from(packet.len()).unwrap_or(u32::MAX);
    let mut bytes = Vec::with_capacity(16 + kept.len());
    // Cannot fail: the data fits the snap length and the original length, and a clock
    // before 2106 fits the seconds field (after that the record is left out).
    if PcapPacket::new(since, original, kept)
        .write_to::<_, NativeEndian>(&mut bytes, TsResolution::MicroSecond, SNAPLEN)
        .is_err()
    {
        bytes.clear();
    }
    bytes
}

/// Splits a pcap byte stream into its packets (for tests and tools); `None` if malformed.
pub fn packets(file: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (mut rest, parser) = PcapParser::new(file).ok()?;
    let mut packets = Vec::new();
    while !rest.is_empty() {
        // Raw: a record is only split off, not judged (pcap-file's checked packet refuses an
        // original length past the snap length, which tcpdump reads).
        let (after, packet) = parser.next_raw_packet(rest).ok()?;
        packets.push(packet.data.into_owned());
        rest = after;
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
            vec![vec![0x45u8, 0, 0, 20], vec![0x45, 1]]
        );
        assert!(packets(&file[..30]).is_none());
    }

    #[test]
    fn header_says_raw_ipv4_in_microseconds() {
        let (_, parser) = PcapParser::new(&file_header()).unwrap();
        assert_eq!(parser.header().datalink, DataLink::RAW);
        assert_eq!(parser.header().ts_resolution, TsResolution::MicroSecond);
        assert_eq!(parser.header().snaplen, SNAPLEN);
        // The largest IPv4 packet fits whole; a longer one is cut to the snap length.
        let mut file = file_header();
        file.extend(record(SystemTime::now(), &[7; 65535]));
        file.extend(record(SystemTime::now(), &vec![8; SNAPLEN as usize + 10]));
        let packets = packets(&file).unwrap();
        assert_eq!(packets[0], [7; 65535]);
        assert_eq!(packets[1], vec![8; SNAPLEN as usize]);
    }
}

//! Reading captured frames: a one-line summary (for the demo and failure messages) and a
//! from-scratch check of every IPv4, TCP and UDP checksum (by the `oracle`, not the code under
//! test).

use std::{fmt, net::Ipv4Addr};

use gateway_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::oracle;

/// The fields of an IPv4 TCP/UDP frame that translation touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Summary {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    pub ttl: u8,
    pub payload_len: usize,
}

impl fmt::Display for Ipv4Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            _ => "ip",
        };
        write!(
            f,
            "{proto} {}:{} > {}:{}",
            self.src, self.src_port, self.dst, self.dst_port
        )?;
        if self.proto == IPPROTO_TCP {
            let names = [
                (0x02, 'S'),
                (0x10, '.'),
                (0x08, 'P'),
                (0x01, 'F'),
                (0x04, 'R'),
            ];
            let flags: String = names
                .iter()
                .filter(|(bit, _)| self.tcp_flags & bit != 0)
                .map(|(_, c)| *c)
                .collect();
            write!(f, " [{flags}]")?;
        }
        write!(f, " len {}", self.payload_len)
    }
}

const ETH_LEN: usize = 14;

/// Returns the IPv4 header and the transport segment of an Ethernet frame, if it is an
/// unfragmented IPv4 TCP or UDP frame.
fn split(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    if frame.len() < ETH_LEN + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[ETH_LEN..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() {
        return None;
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0
        || !matches!(ip[9], IPPROTO_TCP | IPPROTO_UDP)
    {
        return None;
    }
    Some((&ip[..ihl], &ip[ihl..total]))
}

pub fn summarize(frame: &[u8]) -> Option<Ipv4Summary> {
    let (ip, segment) = split(frame)?;
    let proto = ip[9];
    let header_len = match proto {
        IPPROTO_TCP if segment.len() >= 20 => ((segment[12] >> 4) as usize) * 4,
        IPPROTO_UDP if segment.len() >= 8 => 8,
        _ => return None,
    };
    Some(Ipv4Summary {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        proto,
        src_port: u16::from_be_bytes([segment[0], segment[1]]),
        dst_port: u16::from_be_bytes([segment[2], segment[3]]),
        tcp_flags: if proto == IPPROTO_TCP { segment[13] } else { 0 },
        ttl: ip[8],
        payload_len: segment.len().saturating_sub(header_len),
    })
}

/// The sequence and acknowledgment numbers of an IPv4 TCP frame.
pub fn tcp_numbers(frame: &[u8]) -> Option<(u32, u32)> {
    let (ip, segment) = split(frame)?;
    if ip[9] != IPPROTO_TCP || segment.len() < 20 {
        return None;
    }
    let word = |at: usize| {
        u32::from_be_bytes([
            segment[at],
            segment[at + 1],
            segment[at + 2],
            segment[at + 3],
        ])
    };
    Some((word(4), word(8)))
}

/// The transport payload of an IPv4 TCP or UDP frame.
pub fn payload(frame: &[u8]) -> Option<&[u8]> {
    let (ip, segment) = split(frame)?;
    let header_len = match ip[9] {
        IPPROTO_TCP if segment.len() >= 20 => ((segment[12] >> 4) as usize) * 4,
        IPPROTO_UDP if segment.len() >= 8 => 8,
        _ => return None,
    };
    segment.get(header_len..)
}

/// Why a frame's checksums are wrong, or `None` when they are all right (or it is not an
/// IPv4 TCP/UDP frame).
pub fn checksum_error(frame: &[u8]) -> Option<String> {
    let (ip, segment) = split(frame)?;
    let stored_ip = u16::from_be_bytes([ip[10], ip[11]]);
    let expected_ip = match oracle::ipv4_header(ip) {
        Ok(expected) => expected,
        Err(err) => return Some(err),
    };
    if !oracle::same(stored_ip, expected_ip) {
        return Some(format!(
            "IPv4 header checksum {stored_ip:#06x}, expected {expected_ip:#06x}"
        ));
    }
    let proto = ip[9];
    let check_offset = if proto == IPPROTO_TCP { 16 } else { 6 };
    if segment.len() < check_offset + 2 {
        return Some("transport header truncated".into());
    }
    let stored = u16::from_be_bytes([segment[check_offset], segment[check_offset + 1]]);
    if proto == IPPROTO_UDP && stored == 0 {
        return None;
    }
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let expected = match oracle::transport(src, dst, proto, segment) {
        Ok(expected) => expected,
        Err(err) => return Some(err),
    };
    (!oracle::same(stored, expected)).then(|| {
        let name = if proto == IPPROTO_TCP { "TCP" } else { "UDP" };
        format!("{name} checksum {stored:#06x}, expected {expected:#06x}")
    })
}

/// Counts of a checksum audit over captured frames.
#[derive(Debug, Default)]
pub struct ChecksumAudit {
    /// IPv4 TCP/UDP frames whose checksums were recomputed.
    pub checked: usize,
    /// The first few bad ones, described.
    pub bad: Vec<String>,
    pub bad_count: usize,
}

/// Recomputes the checksums of every received IPv4 TCP/UDP frame.
pub fn audit_checksums<'a>(
    frames: impl IntoIterator<Item = &'a crate::capture::Frame>,
) -> ChecksumAudit {
    let mut audit = ChecksumAudit::default();
    for frame in frames.into_iter().filter(|frame| !frame.outgoing) {
        if split(&frame.bytes).is_none() {
            continue;
        }
        audit.checked += 1;
        if let Some(error) = checksum_error(&frame.bytes) {
            audit.bad_count += 1;
            if audit.bad.len() < 5 {
                let summary = summarize(&frame.bytes)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                audit.bad.push(format!("{summary}: {error}"));
            }
        }
    }
    audit
}

/// An ICMP error (destination unreachable, time exceeded) as a host received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpErrorFrame {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub kind: u8,
    pub code: u8,
    /// Bytes 4-7 of the ICMP header: fragmentation-needed's next-hop MTU in the last two.
    pub rest: [u8; 4],
    /// The quoted datagram: IPv4 header and what follows, as far as the message goes.
    pub quote: Vec<u8>,
    /// Bytes after the IPv4 total length (Ethernet padding).
    pub padding: Vec<u8>,
}

impl IcmpErrorFrame {
    pub fn next_hop_mtu(&self) -> u16 {
        u16::from_be_bytes([self.rest[2], self.rest[3]])
    }

    /// The quoted datagram's IPv4 header and the 8 bytes after it (what a sender's stack
    /// matches the error by), if the quote is that long.
    pub fn quoted_head(&self) -> Option<&[u8]> {
        let ihl = ((*self.quote.first()? & 0x0f) as usize) * 4;
        self.quote.get(..ihl + 8)
    }
}

/// The ICMP error in `frame`, its IPv4 header and ICMP checksums verified: `Ok(None)` when
/// the frame is not an IPv4 ICMP destination-unreachable or time-exceeded message, `Err`
/// when it is one with a wrong checksum or length.
pub fn icmp_error(frame: &[u8]) -> Result<Option<IcmpErrorFrame>, String> {
    if frame.len() < ETH_LEN + 20 || frame[12..14] != [0x08, 0x00] {
        return Ok(None);
    }
    let ip = &frame[ETH_LEN..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != IPPROTO_ICMP {
        return Ok(None);
    }
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if total > ip.len() || total < ihl + 8 {
        return Err(format!(
            "ICMP message of {total} bytes in {} captured",
            ip.len()
        ));
    }
    let icmp = &ip[ihl..total];
    if !matches!(icmp[0], 3 | 11) {
        return Ok(None);
    }
    let stored = u16::from_be_bytes([ip[10], ip[11]]);
    let expected = oracle::ipv4_header(&ip[..ihl])?;
    if !oracle::same(stored, expected) {
        return Err(format!(
            "IPv4 header checksum {stored:#06x}, expected {expected:#06x}"
        ));
    }
    let (src, dst) = (
        [ip[12], ip[13], ip[14], ip[15]],
        [ip[16], ip[17], ip[18], ip[19]],
    );
    let stored_icmp = u16::from_be_bytes([icmp[2], icmp[3]]);
    if !oracle::same(
        stored_icmp,
        oracle::transport(src, dst, IPPROTO_ICMP, icmp)?,
    ) {
        return Err(format!("ICMP checksum wrong in {icmp:02x?}"));
    }
    Ok(Some(IcmpErrorFrame {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        kind: icmp[0],
        code: icmp[1],
        rest: [icmp[4], icmp[5], icmp[6], icmp[7]],
        quote: icmp[8..].to_vec(),
        padding: ip[total..].to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;
    use crate::frame::FrameSpec;

    #[test]
    fn the_audit_catches_a_changed_byte() {
        let (src, dst) = (
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000),
            SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 2), 21),
        );
        for frame in [
            FrameSpec::tcp(src, dst).build(),
            FrameSpec::udp(src, dst).build(),
        ] {
            assert_eq!(checksum_error(&frame), None);
            let mut payload_changed = frame.clone();
            *payload_changed.last_mut().unwrap() ^= 0x40;
            assert!(checksum_error(&payload_changed).is_some_and(|why| why.contains("checksum")));
            let mut ttl_changed = frame;
            ttl_changed[ETH_LEN + 8] -= 1;
            assert!(checksum_error(&ttl_changed).is_some_and(|why| why.starts_with("IPv4 header")));
        }
    }

    #[test]
    fn icmp_errors_are_checked_too() {
        let quoted = FrameSpec::udp(
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000),
            SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 2), 53),
        );
        let frame = FrameSpec::icmp_error(
            Ipv4Addr::new(203, 0, 113, 9),
            Ipv4Addr::new(10, 0, 0, 2),
            3,
            4,
            &quoted,
        )
        .build();
        assert!(icmp_error(&frame).is_ok_and(|error| error.is_some()));
        let mut changed = frame;
        *changed.last_mut().unwrap() ^= 1;
        assert!(icmp_error(&changed).is_err());
    }
}

//! The raw IPv4 socket the ALG sends its packets with, a batch per system call.
//!
//! Sending through a raw socket (`IPPROTO_RAW`, which implies `IP_HDRINCL`) hands the packet,
//! headers and checksums as built, to the gateway's own routing: the kernel picks the egress
//! interface and resolves the next hop's link address, as for any forwarded packet. It leaves
//! on the egress path, where no gateway program runs, so it is never translated twice.
//!
//! The packets a batch of punts produced leave with one `sendmmsg`: the system call, not the
//! routing of each packet, is what a send per packet paid for many times over. (Writing them
//! to the punt tap instead would land them at the tap's ingress, where the stack would route
//! them again as packets arriving from a device with no address; the raw socket's output path
//! is the shorter road.)

use std::{
    io::{self, IoSlice},
    net::SocketAddrV4,
};

use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
use socket2::{Domain, Protocol, Socket, Type};

use super::control::Outgoing;

/// Messages handed to one `sendmmsg`. The kernel takes up to `UIO_MAXIOV` (1024); a batch of
/// punts rarely produces more than a few dozen packets, and a bounded chunk keeps the
/// per-call headers on a small, reused scale.
const MAX_PER_CALL: usize = 64;

/// A raw IPv4 socket for packets built whole by the ALG.
pub struct RawSender {
    socket: Socket,
}

/// What sending a batch took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    /// System calls made (`sendmmsg`, one per chunk, plus one per failed packet).
    pub calls: u64,
    /// Packets the kernel took.
    pub sent: u64,
}

impl RawSender {
    pub fn open() -> io::Result<RawSender> {
        // IPPROTO_RAW: the ALG writes the IPv4 header itself (IP_HDRINCL implied).
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )?;
        Ok(RawSender { socket })
    }

    /// Sends `packets` in order, as few `sendmmsg` calls as the kernel lets it: a call stops
    /// at the first packet that fails (a route missing, a full buffer), which `failed` is told
    /// about; the rest go on in the next call.
    pub fn send_batch(
        &self,
        packets: &[Outgoing],
        mut failed: impl FnMut(&Outgoing, io::Error),
    ) -> SendReport {
        let mut report = SendReport::default();
        let mut next = 0;
        while let Some(rest) = packets.get(next..).filter(|rest| !rest.is_empty()) {
            let chunk = &rest[..rest.len().min(MAX_PER_CALL)];
            report.calls += 1;
            match self.send_chunk(chunk) {
                Ok(0) => {
                    // A call with messages sends one or fails; never loop on nothing.
                    failed(&chunk[0], io::Error::other("sendmmsg sent nothing"));
                    next += 1;
                }
                Ok(sent) => {
                    report.sent += sent as u64;
                    next += sent;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    // Only the chunk's first packet can fail a call: a later one ends it
                    // early with what was sent before it.
                    failed(&chunk[0], err);
                    next += 1;
                }
            }
        }
        report
    }

    fn send_chunk(&self, chunk: &[Outgoing]) -> io::Result<usize> {
        let destinations: Vec<SocketAddrAny> = chunk
            .iter()
            .map(|packet| SocketAddrAny::from(SocketAddrV4::new(packet.dst, 0)))
            .collect();
        let payloads: Vec<[IoSlice<'_>; 1]> = chunk
            .iter()
            .map(|packet| [IoSlice::new(&packet.bytes)])
            .collect();
        // No ancillary data: the header the ALG built says everything.
        let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = chunk
            .iter()
            .map(|_| SendAncillaryBuffer::default())
            .collect();
        let mut messages: Vec<MMsgHdr<'_>> = destinations
            .iter()
            .zip(&payloads)
            .zip(controls.iter_mut())
            .map(|((destination, payload), control)| {
                MMsgHdr::new_with_addr(destination, payload, control)
            })
            .collect();
        Ok(sendmmsg(&self.socket, &mut messages, SendFlags::empty())?)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// Packets to loopback go in one call; one to an unroutable destination in the middle
    /// ends the call early, fails alone (told), and the rest go in the next call. Runs in a
    /// fresh network namespace: nothing leaves the test.
    #[test]
    fn a_batch_goes_in_one_call_but_for_the_packet_that_fails() {
        std::thread::spawn(|| {
            // SAFETY: CLONE_NEWNET moves only this thread; no memory is involved.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "skipped: no network namespace ({})",
                    io::Error::last_os_error()
                );
                return;
            }
            // A child forked from this thread is in its namespace.
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("ip");
            assert!(up.success(), "ip link set lo up");
            let sender = RawSender::open().expect("raw socket");
            let loopback = Ipv4Addr::LOCALHOST;
            let unroutable = Ipv4Addr::new(192, 0, 2, 1);
            let packets: Vec<Outgoing> = [loopback, loopback, unroutable, loopback, loopback]
                .into_iter()
                .map(|dst| Outgoing {
                    dst,
                    bytes: ipv4_header(dst),
                })
                .collect();
            let mut failures = Vec::new();
            let report = sender.send_batch(&packets, |packet, _| failures.push(packet.dst));
            assert_eq!(failures, [unroutable]);
            assert_eq!(report, SendReport { calls: 3, sent: 4 });
            let report = sender.send_batch(&packets[..2], |_, err| panic!("{err}"));
            assert_eq!(report, SendReport { calls: 1, sent: 2 });
            assert_eq!(
                sender.send_batch(&[], |_, err| panic!("{err}")),
                SendReport::default()
            );
        })
        .join()
        .expect("test thread");
    }

    /// A bare IPv4 header (no payload) from loopback to `dst`.
    fn ipv4_header(dst: Ipv4Addr) -> Vec<u8> {
        let mut header = vec![0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 253, 0, 0];
        header.extend_from_slice(&[127, 0, 0, 1]);
        header.extend_from_slice(&dst.octets());
        header
    }
}

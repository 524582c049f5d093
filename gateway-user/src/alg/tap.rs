//! The punt tap: a TAP device the agent owns, which TC redirects FTP control packets to
//! (`gateway-ebpf/src/punt.rs`). Reading it is reading a socket: `tun_net_xmit` queues the
//! frame and wakes the reader with `sk_data_ready`, an ordinary wake-up, where the punt ring's
//! is an irq_work raised by a self-IPI (a trapped APIC write per record in a VM).
//!
//! The device lives as long as the descriptor: when the agent exits, however it exits, the
//! kernel unregisters the tap and empties the `PUNT_TAP` slot that named it, and punts go to
//! the ring until the next agent publishes its own tap.

use std::{ffi::CStr, io, os::fd::OwnedFd};

use gateway_common::punt_frame;
use rustix::{
    fs::{Mode, OFlags},
    ioctl::{self, Opcode, Setter, Updater},
};
use tokio::io::unix::AsyncFd;

use super::shell::BatchRead;
use crate::system;

/// The name asked of the kernel: the first free `gwpunt<N>`.
pub const NAME_PATTERN: &str = "gwpunt%d";
/// A frame from the tap: an Ethernet header (and a VLAN tag the tap may put back), then the
/// largest IPv4 packet.
const FRAME_ROOM: usize = punt_frame::ETH_LEN + 4 + 65535;
/// Frames taken per wake-up before the other work of the loop gets a turn; the rest stay
/// queued (the descriptor stays readable) for the next turn.
const MAX_BATCH: usize = 256;

pub struct PuntTap {
    fd: AsyncFd<OwnedFd>,
    name: String,
    ifindex: u32,
    /// One frame's room, reused by every read.
    frame: Vec<u8>,
}

impl PuntTap {
    /// Creates the tap in the agent's network namespace and brings it up: no address, IPv6
    /// off (no link-local address, no router or neighbour solicitations: nothing of the
    /// stack's own is ever queued to it), the largest MTU the tap takes.
    pub fn create() -> io::Result<PuntTap> {
        let fd = rustix::fs::open(
            "/dev/net/tun",
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| with_context(err.into(), "open /dev/net/tun"))?;
        let mut request = ifreq(NAME_PATTERN)?;
        // No packet-information prefix: a read returns the frame as it left the program.
        // No offloads are announced (TUNSETOFFLOAD), so the kernel finishes partial checksums
        // and segments GSO packets before they reach the tap: the ALG sees ordinary packets.
        request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads an ifreq and writes the name it chose back into it.
        unsafe { ioctl::ioctl(&fd, Updater::<TUNSETIFF, libc::ifreq>::new(&mut request)) }
            .map_err(|err| with_context(err.into(), "TUNSETIFF"))?;
        // SAFETY: the kernel wrote the NUL-terminated name it chose.
        let name = unsafe { CStr::from_ptr(request.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let ifindex = system::if_index(&name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("tap {name} has no ifindex"),
            )
        })?;
        // Before the link is up, so that it never gets an IPv6 link-local address. Absent
        // when IPv6 is off altogether.
        match std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1") {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(with_context(err, "disable IPv6 on the tap")),
        }
        let control = system::ioctl_socket()?;
        // A frame larger than the MTU is queued all the same (a redirect does not check it);
        // the largest MTU says what the tap carries, whole control-connection super-packets.
        let mut request = ifreq(&name)?;
        request.ifr_ifru.ifru_mtu = MTU;
        // SAFETY: SIOCSIFMTU reads an ifreq.
        unsafe { ioctl::ioctl(&control, Setter::<SIOCSIFMTU, libc::ifreq>::new(request)) }
            .map_err(|err| with_context(err.into(), "SIOCSIFMTU"))?;
        let mut request = ifreq(&name)?;
        // SAFETY: SIOCGIFFLAGS reads an ifreq's name and writes its flags.
        unsafe {
            ioctl::ioctl(
                &control,
                Updater::<SIOCGIFFLAGS, libc::ifreq>::new(&mut request),
            )
        }
        .map_err(|err| with_context(err.into(), "SIOCGIFFLAGS"))?;
        // SAFETY: reading the flags SIOCGIFFLAGS wrote.
        unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: SIOCSIFFLAGS reads an ifreq.
        unsafe { ioctl::ioctl(&control, Setter::<SIOCSIFFLAGS, libc::ifreq>::new(request)) }
            .map_err(|err| with_context(err.into(), "SIOCSIFFLAGS"))?;
        // SAFETY: the AsyncFd owns the descriptor, which stays open and the same until it
        // drops (deregistering it first).
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|err| err.into_parts().1)?;
        Ok(PuntTap {
            fd,
            name,
            ifindex,
            frame: vec![0; FRAME_ROOM],
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Waits for frames, then takes those queued (at most `MAX_BATCH`): (reason, packet from
    /// its IPv4 header on), in order, as the ring reader does.
    pub async fn next_batch(&mut self, batch: &mut Vec<(u8, Vec<u8>)>) -> io::Result<BatchRead> {
        let PuntTap { fd, frame, .. } = self;
        let mut wakeups = 0;
        loop {
            let mut guard = fd.readable().await?;
            wakeups += 1;
            let mut read = drain(frame, batch, |frame| {
                match guard.try_io(|fd| read_frame(fd.get_ref(), frame)) {
                    Ok(result) => result.map(Some),
                    // Drained: readiness is cleared, the next wait sleeps.
                    Err(_would_block) => Ok(None),
                }
            })?;
            if read.took_any() {
                read.wakeups = wakeups;
                return Ok(read);
            }
        }
    }

    /// Takes the frames queued now (at most `MAX_BATCH`) without waiting. Tokio's readiness
    /// is left as it is: at worst the next wait returns at once to an empty queue, finds it
    /// so (which clears it), and sleeps.
    pub fn try_batch(&mut self, batch: &mut Vec<(u8, Vec<u8>)>) -> io::Result<BatchRead> {
        let PuntTap { fd, frame, .. } = self;
        drain(frame, batch, |frame| {
            match read_frame(fd.get_ref(), frame) {
                Ok(length) => Ok(Some(length)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(err) => Err(err),
            }
        })
    }
}

fn read_frame(fd: &OwnedFd, frame: &mut [u8]) -> io::Result<usize> {
    rustix::io::read(fd, frame).map_err(Into::into)
}

/// Reads frames into `frame` with `read_one` until it says the queue is empty (`None`) or
/// `MAX_BATCH` packets are taken, and puts the decoded ones into `batch`.
fn drain(
    frame: &mut [u8],
    batch: &mut Vec<(u8, Vec<u8>)>,
    mut read_one: impl FnMut(&mut [u8]) -> io::Result<Option<usize>>,
) -> io::Result<BatchRead> {
    // As for the ring: frames punted while the queue is drained count as not having waited.
    let taken_ns_low = crate::dataplane::monotonic_now_ns() as u32;
    let mut read = BatchRead::default();
    while read.packets < MAX_BATCH {
        let length = match read_one(frame) {
            Ok(Some(length)) => length,
            Ok(None) => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        match frame
            .get(..length)
            .and_then(|frame| punt_frame::decode(frame).map(|(meta, ip)| (meta, &frame[ip..])))
        {
            Some((meta, packet)) if !packet.is_empty() => {
                read.packets += 1;
                let waited = taken_ns_low.wrapping_sub(meta.punted_ns_low) as i32;
                read.waited_ns += waited.max(0) as u64;
                batch.push((meta.reason, packet.to_vec()));
            }
            _ => read.undecodable += 1,
        }
    }
    Ok(read)
}

// The ioctls' numbers and the ifreq they take are libc's (linux/if_tun.h, linux/sockios.h):
// neither rustix nor nix has an ifreq or a request that sets a device's MTU or flags; rustix's
// typed ioctl makes the calls.
const TUNSETIFF: Opcode = libc::TUNSETIFF as Opcode;
const SIOCSIFMTU: Opcode = libc::SIOCSIFMTU as Opcode;
const SIOCGIFFLAGS: Opcode = libc::SIOCGIFFLAGS as Opcode;
const SIOCSIFFLAGS: Opcode = libc::SIOCSIFFLAGS as Opcode;

/// The tap's MTU: the largest a tap takes (65535 less its Ethernet header).
const MTU: libc::c_int = 65535 - punt_frame::ETH_LEN as libc::c_int;

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all zeroes is a valid (empty) request.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} too long"),
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(request)
}

fn with_context(err: io::Error, what: &str) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

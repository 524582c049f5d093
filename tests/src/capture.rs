//! Packet capture on one interface of a namespace, through an AF_PACKET socket (what tcpdump
//! uses), on a thread of its own.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};

use crate::netns::Netns;

/// One captured frame, Ethernet header first.
#[derive(Debug, Clone)]
pub struct Frame {
    pub bytes: Vec<u8>,
    /// Sent by this host (`PACKET_OUTGOING`) rather than received.
    pub outgoing: bool,
}

pub struct Capture {
    stop: Arc<AtomicBool>,
    worker: JoinHandle<anyhow::Result<Vec<Frame>>>,
}

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;

impl Capture {
    /// Starts capturing on `interface` in `netns`; returns once the socket is bound, so no
    /// packet sent after this returns is missed.
    pub fn start(netns: &Netns, interface: &str) -> anyhow::Result<Capture> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let interface = interface.to_owned();
        let stop_flag = stop.clone();
        let worker = netns.spawn(move || {
            let socket = match open_socket(&interface) {
                Ok(socket) => {
                    let _ = ready_tx.send(Ok(()));
                    socket
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(format!("{err:#}")));
                    return Err(err);
                }
            };
            let result = receive_until(socket, &stop_flag);
            // SAFETY: our own descriptor.
            unsafe { libc::close(socket) };
            result
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Capture { stop, worker }),
            Ok(Err(err)) => bail!(
                "capture on {interface_name}: {err}",
                interface_name = netns.name()
            ),
            Err(_) => bail!("capture thread in {} did not start", netns.name()),
        }
    }

    /// Stops capturing and returns every frame seen.
    pub fn finish(self) -> anyhow::Result<Vec<Frame>> {
        self.stop.store(true, Ordering::Relaxed);
        self.worker
            .join()
            .map_err(|_| anyhow!("capture thread panicked"))?
    }
}

fn open_socket(interface: &str) -> anyhow::Result<i32> {
    let name = std::ffi::CString::new(interface)?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {interface}");
    }
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            ETH_P_ALL.to_be() as i32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    let setup = || -> anyhow::Result<()> {
        // SAFETY: all-zero sockaddr_ll is valid; we fill what bind needs.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = ETH_P_ALL.to_be();
        address.sll_ifindex = index as i32;
        // SAFETY: address is a valid sockaddr_ll of the given size.
        if unsafe {
            libc::bind(
                fd,
                (&address as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error()).context("bind(AF_PACKET)");
        }
        // A bulk transfer arrives faster than a test thread may drain it: a large buffer (root
        // may exceed rmem_max) keeps the capture complete.
        let buffer: libc::c_int = 256 << 20;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: option values are valid for their size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&buffer as *const libc::c_int).cast(),
                4,
            );
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error()).context("SO_RCVTIMEO");
            }
        }
        Ok(())
    };
    if let Err(err) = setup() {
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        return Err(err);
    }
    Ok(fd)
}

fn receive_until(fd: i32, stop: &AtomicBool) -> anyhow::Result<Vec<Frame>> {
    let mut frames = Vec::new();
    let mut buffer = vec![0u8; 1 << 17];
    loop {
        // SAFETY: zeroed sockaddr_ll is valid as an out-parameter.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buffer and address are valid for the lengths given.
        let received = unsafe {
            libc::recvfrom(
                fd,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        if received < 0 {
            let err = std::io::Error::last_os_error();
            match err.kind() {
                // Timed out with nothing queued: done if asked to stop, else keep waiting.
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(frames);
                    }
                    continue;
                }
                std::io::ErrorKind::Interrupted => continue,
                _ => return Err(err).context("recvfrom(AF_PACKET)"),
            }
        }
        frames.push(Frame {
            bytes: buffer[..received as usize].to_vec(),
            outgoing: from.sll_pkttype == PACKET_OUTGOING,
        });
    }
}

//! Packet capture on one interface of a namespace, through an AF_PACKET socket (what tcpdump
//! uses), on a thread of its own.

use std::{
    mem::MaybeUninit,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type, socklen_t};

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
            receive_until(socket, &stop_flag)
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

fn open_socket(interface: &str) -> anyhow::Result<Socket> {
    let index = crate::if_index(interface)?;
    let protocol = Protocol::from(i32::from(ETH_P_ALL.to_be()));
    let socket =
        Socket::new(Domain::PACKET, Type::RAW, Some(protocol)).context("socket(AF_PACKET)")?;
    socket
        .bind(&link_address(index))
        .context("bind(AF_PACKET)")?;
    // A bulk transfer arrives faster than a test thread may drain it: a large buffer (root
    // may exceed rmem_max, which SO_RCVBUFFORCE does and socket2 has not) keeps the capture
    // complete.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, 256 << 20);
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .context("SO_RCVTIMEO")?;
    Ok(socket)
}

/// The `sockaddr_ll` of every protocol on interface `index` (socket2 makes IP and Unix
/// addresses only; the struct is libc's).
fn link_address(index: u32) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: a sockaddr_storage has the room and alignment of a sockaddr_ll.
    let address = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = ETH_P_ALL.to_be();
    address.sll_ifindex = index as i32;
    // SAFETY: the storage holds a sockaddr_ll, which is this long.
    unsafe { SockAddr::new(storage, size_of::<libc::sockaddr_ll>() as socklen_t) }
}

/// Whether an AF_PACKET socket's source address says this host sent the frame.
fn sent_by_this_host(from: SockAddr) -> bool {
    let mut storage = from.as_storage();
    // SAFETY: an AF_PACKET socket's source addresses are sockaddr_ll.
    unsafe { storage.view_as::<libc::sockaddr_ll>() }.sll_pkttype == PACKET_OUTGOING
}

fn receive_until(socket: Socket, stop: &AtomicBool) -> anyhow::Result<Vec<Frame>> {
    let mut frames = Vec::new();
    let mut buffer = vec![MaybeUninit::<u8>::uninit(); 1 << 17];
    loop {
        let (received, from) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(err) => match err.kind() {
                // Timed out with nothing queued: done if asked to stop, else keep waiting.
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(frames);
                    }
                    continue;
                }
                std::io::ErrorKind::Interrupted => continue,
                _ => return Err(err).context("recvfrom(AF_PACKET)"),
            },
        };
        // SAFETY: recvfrom initialised the first `received` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<u8>(), received) };
        frames.push(Frame {
            bytes: bytes.to_vec(),
            outgoing: sent_by_this_host(from),
        });
    }
}

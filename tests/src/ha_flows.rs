//! Traffic for the HA lab's failover tests (`ha_failback.rs`): the outside host's echo
//! servers, which record who they saw after translation, and the inside host's long-lived
//! flows, which record when each round trip came back (the pauses a failover causes).
//! The same shape as the helpers of `ha_sync.rs`, here for tests of several failovers:
//! pauses are read per phase, and short UDP flows can be opened in bulk.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{ha_lab::WAN_HOST, netns::Netns};

/// How long a flow's reads wait: longer than any failover (TCP retransmits meanwhile).
pub const FLOW_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Times of a flow's successful round trips.
#[derive(Clone, Default)]
pub struct Progress(Arc<Mutex<Vec<Instant>>>);

impl Progress {
    fn record(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Instant::now());
    }

    pub fn times(&self) -> Vec<Instant> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn count_after(&self, since: Instant) -> usize {
        self.times().iter().filter(|time| **time > since).count()
    }

    /// The longest pause between two round trips that ended after `from` and up to `to`
    /// (the pause that contains a failover at `from`: the last round trip before it is
    /// included).
    pub fn longest_gap_between(&self, from: Instant, to: Instant) -> Duration {
        let times = self.times();
        let first = times
            .iter()
            .rposition(|time| *time <= from)
            .unwrap_or_default();
        times[first..]
            .windows(2)
            .take_while(|pair| pair[0] <= to)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default()
    }

    /// Waits until `count` round trips ended after `since`.
    pub fn wait_for(&self, count: usize, since: Instant, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.count_after(since) >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

/// The outside host's echo servers at `WAN_HOST`: TCP (one connection at a time, echoed
/// until it ends) and UDP; both record the sources they saw.
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    pub tcp_peers: Arc<Mutex<Vec<SocketAddr>>>,
    pub udp_peers: Arc<Mutex<BTreeSet<SocketAddr>>>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl EchoServers {
    pub fn start(wan: &Netns, tcp_port: u16, udp_port: u16) -> anyhow::Result<EchoServers> {
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_peers = Arc::new(Mutex::new(Vec::new()));
        let udp_peers = Arc::new(Mutex::new(BTreeSet::new()));
        let (ready, listening) = std::sync::mpsc::channel();
        let (stopped, peers, tcp_ready) = (stop.clone(), tcp_peers.clone(), ready.clone());
        let tcp = wan.spawn(move || {
            let listener = TcpListener::bind(SocketAddrV4::new(WAN_HOST, tcp_port))?;
            listener.set_nonblocking(true)?;
            let _ = tcp_ready.send(());
            while !stopped.load(Ordering::Relaxed) {
                let (mut stream, peer) = match listener.accept() {
                    Ok(accepted) => accepted,
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(err) => return Err(err.into()),
                };
                peers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(peer);
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(Duration::from_millis(200)))?;
                let mut buffer = [0; 256];
                while !stopped.load(Ordering::Relaxed) {
                    match stream.read(&mut buffer) {
                        Ok(0) => break,
                        Ok(read) => stream.write_all(&buffer[..read])?,
                        Err(err)
                            if matches!(
                                err.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
            }
            Ok(())
        });
        let (stopped, peers) = (stop.clone(), udp_peers.clone());
        let udp = wan.spawn(move || {
            let socket = UdpSocket::bind(SocketAddrV4::new(WAN_HOST, udp_port))?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let _ = ready.send(());
            let mut buffer = [0; 256];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((read, peer)) = socket.recv_from(&mut buffer) {
                    peers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(peer);
                    socket.send_to(&buffer[..read], peer)?;
                }
            }
            Ok(())
        });
        let mut servers = EchoServers {
            stop,
            tcp_peers,
            udp_peers,
            threads: vec![tcp, udp],
        };
        for _ in 0..2 {
            if listening.recv_timeout(Duration::from_secs(5)).is_err() {
                servers.stop().context("echo servers did not start")?;
                anyhow::bail!("echo servers did not start");
            }
        }
        Ok(servers)
    }

    /// Stops both servers; an error if one failed.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("echo server panicked"))??;
        }
        Ok(())
    }

    pub fn tcp_peers(&self) -> Vec<SocketAddr> {
        self.tcp_peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn udp_peers(&self) -> BTreeSet<SocketAddr> {
        self.udp_peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn message(number: u64) -> [u8; 16] {
    let mut message = [0; 16];
    message[..8].copy_from_slice(b"ha-flow:");
    message[8..].copy_from_slice(&number.to_be_bytes());
    message
}

/// The inside host's long-lived flows to the echo servers: one TCP connection and one UDP
/// socket, a numbered 16-byte message every 50 ms each, every echo checked. The TCP thread
/// ends with an error if its connection breaks (a reset, an echo that differs).
pub struct LongFlows {
    stop: Arc<AtomicBool>,
    pub tcp: Progress,
    pub udp: Progress,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl LongFlows {
    pub fn start(lan: &Netns, tcp_port: u16, udp_port: u16) -> LongFlows {
        let stop = Arc::new(AtomicBool::new(false));
        let mut flows = LongFlows {
            stop: stop.clone(),
            tcp: Progress::default(),
            udp: Progress::default(),
            threads: Vec::new(),
        };
        let (stopped, progress) = (stop.clone(), flows.tcp.clone());
        flows.threads.push(lan.spawn(move || {
            let mut stream = TcpStream::connect_timeout(
                &SocketAddr::V4(SocketAddrV4::new(WAN_HOST, tcp_port)),
                Duration::from_secs(5),
            )?;
            stream.set_read_timeout(Some(FLOW_READ_TIMEOUT))?;
            let mut number = 0;
            while !stopped.load(Ordering::Relaxed) {
                stream.write_all(&message(number))?;
                let mut echo = [0; 16];
                stream.read_exact(&mut echo)?;
                anyhow::ensure!(echo == message(number), "tcp echo {number} differs");
                progress.record();
                number += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        }));
        let (stopped, progress) = (stop, flows.udp.clone());
        flows.threads.push(lan.spawn(move || {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(SocketAddrV4::new(WAN_HOST, udp_port))?;
            socket.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut number = 0;
            while !stopped.load(Ordering::Relaxed) {
                // Lost during a failover, refused (ICMP) meanwhile: the flow goes on.
                let _ = socket.send(&message(number));
                let mut echo = [0; 16];
                if let Ok(16) = socket.recv(&mut echo)
                    && echo == message(number)
                {
                    progress.record();
                }
                number += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        }));
        flows
    }

    /// Stops both flows; an error if the TCP connection broke.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("flow thread panicked"))??;
        }
        Ok(())
    }
}

impl Drop for LongFlows {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `count` short UDP flows from the inside host, each from a port of its own (the sockets
/// stay open until all are done, so no port is used twice; a later call may reuse one):
/// one datagram echoed by the outside server (retried a few times). Each leaves a mapping
/// and two sessions in the gateway for the UDP timeout. Returns the inside ports.
pub fn short_udp_flows(lan: &Netns, udp_port: u16, count: usize) -> anyhow::Result<Vec<u16>> {
    lan.spawn(move || {
        let mut sockets = Vec::with_capacity(count);
        for index in 0..count {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(SocketAddrV4::new(WAN_HOST, udp_port))?;
            socket.set_read_timeout(Some(Duration::from_millis(300)))?;
            let sent = message(1_000_000 + index as u64);
            let answered = (0..10).any(|_| {
                let _ = socket.send(&sent);
                let mut echo = [0; 16];
                matches!(socket.recv(&mut echo), Ok(16) if echo == sent)
            });
            anyhow::ensure!(answered, "short UDP flow {index}: no echo");
            sockets.push(socket);
        }
        sockets
            .iter()
            .map(|socket| Ok(socket.local_addr()?.port()))
            .collect()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("short flows panicked"))?
}

//! A TCP bulk transfer between two namespaces, both directions, with SHA-256 on each end.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use sha2::{Digest, Sha256};

use crate::netns::Netns;

/// What each end saw of one transfer.
#[derive(Debug)]
pub struct TransferReport {
    /// Bytes the client sent, and their hash as sent and as received by the server.
    pub upload_bytes: usize,
    pub upload_sent: [u8; 32],
    pub upload_received: [u8; 32],
    /// Bytes the server sent back, and their hash as sent and as received by the client.
    pub download_bytes: usize,
    pub download_sent: [u8; 32],
    pub download_received: [u8; 32],
    /// The client's own address, and the peer address the server saw (the translation's work).
    pub client_local: SocketAddr,
    pub server_saw_peer: SocketAddr,
    /// The server's own address, and the address the client connected to.
    pub server_local: SocketAddr,
    pub client_connected_to: SocketAddr,
    pub elapsed: Duration,
}

impl TransferReport {
    pub fn intact(&self) -> bool {
        self.upload_sent == self.upload_received && self.download_sent == self.download_received
    }
}

/// Deterministic pseudo-random bytes (xorshift), so corruption anywhere changes the hash.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The client in `client_ns` connects to `connect`, uploads `bytes` and closes its side; the
/// server in `server_ns` listening on `listen` reads to the end, then sends `bytes` of another
/// pattern back. Fails if anything takes longer than `timeout`.
pub fn tcp_transfer(
    server_ns: &Netns,
    listen: SocketAddrV4,
    client_ns: &Netns,
    connect: SocketAddrV4,
    bytes: usize,
    timeout: Duration,
) -> anyhow::Result<TransferReport> {
    let started = Instant::now();
    let (bound_tx, bound_rx) = mpsc::channel();
    let server = server_ns.spawn(move || -> anyhow::Result<_> {
        let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
        listener.set_nonblocking(true)?;
        let _ = bound_tx.send(());
        let deadline = Instant::now() + timeout;
        let (mut stream, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("server at {listen}: no connection within {timeout:?}");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(err) => return Err(err).context("accept"),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let local = stream.local_addr()?;
        let mut received = Vec::with_capacity(bytes);
        stream.read_to_end(&mut received).context("server read")?;
        let download = pattern(0x5eed_0d0e, bytes);
        stream.write_all(&download).context("server write")?;
        // The client may already be gone once it has read everything: not an error.
        let _ = stream.shutdown(Shutdown::Write);
        // Wait for the client to close, so the last bytes are not cut by an early RST.
        let mut rest = [0u8; 1];
        let _ = stream.read(&mut rest);
        Ok((
            peer,
            local,
            received.len(),
            sha256(&received),
            sha256(&download),
        ))
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow!("server thread did not bind {listen}"))?;

    let client = client_ns.spawn(move || -> anyhow::Result<_> {
        let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(connect), timeout)
            .with_context(|| format!("connect to {connect}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let local = stream.local_addr()?;
        let peer = stream.peer_addr()?;
        let upload = pattern(0x0000_0091_00ad, bytes);
        stream.write_all(&upload).context("client write")?;
        stream.shutdown(Shutdown::Write)?;
        let mut received = Vec::with_capacity(bytes);
        stream.read_to_end(&mut received).context("client read")?;
        Ok((
            local,
            peer,
            sha256(&upload),
            received.len(),
            sha256(&received),
        ))
    });

    let client = client
        .join()
        .map_err(|_| anyhow!("client thread panicked"))?;
    let server = server
        .join()
        .map_err(|_| anyhow!("server thread panicked"))?;
    let (client_local, client_connected_to, upload_sent, download_len, download_received) = client?;
    let (server_saw_peer, server_local, upload_len, upload_received, download_sent) = server?;
    if upload_len != bytes || download_len != bytes {
        bail!(
            "short transfer: server got {upload_len} of {bytes} bytes, client got {download_len}"
        );
    }
    Ok(TransferReport {
        upload_bytes: upload_len,
        upload_sent,
        upload_received,
        download_bytes: download_len,
        download_sent,
        download_received,
        client_local,
        server_saw_peer,
        server_local,
        client_connected_to,
        elapsed: started.elapsed(),
    })
}

/// Tries to open a TCP connection and says whether it succeeded; for negative controls.
pub fn tcp_connects(
    client_ns: &Netns,
    connect: SocketAddrV4,
    timeout: Duration,
) -> anyhow::Result<bool> {
    client_ns
        .spawn(move || Ok(TcpStream::connect_timeout(&SocketAddr::V4(connect), timeout).is_ok()))
        .join()
        .map_err(|_| anyhow!("connect thread panicked"))?
}

pub fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|byte| format!("{byte:02x}")).collect()
}

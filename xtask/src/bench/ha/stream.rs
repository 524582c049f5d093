//! A paced TCP transfer through the pair, and when its receiver's reads returned: the
//! pauses a failover causes.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use gateway_tests::ha_lab::{HaLab, WAN_HOST};

const STREAM_PORT: u16 = 7032;

/// A paced TCP transfer from the inside host to the outside host (8 KiB every 5 ms); the
/// receiver records when each read returned.
pub(super) struct Stream {
    stop: Arc<AtomicBool>,
    reads: Arc<Mutex<Vec<Instant>>>,
    threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Stream {
    pub(super) fn start(lab: &HaLab) -> anyhow::Result<Stream> {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(Mutex::new(Vec::new()));
        let (ready, listening) = std::sync::mpsc::channel();
        let (stopped, times) = (stop.clone(), reads.clone());
        let receiver = lab.wan.spawn(move || {
            let listener = TcpListener::bind(SocketAddrV4::new(WAN_HOST, STREAM_PORT))?;
            let _ = ready.send(());
            let (mut stream, _) = listener.accept()?;
            stream.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut buffer = vec![0; 65536];
            while !stopped.load(Ordering::Relaxed) {
                match stream.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(_) => times
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Instant::now()),
                    Err(err)
                        if matches!(
                            err.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            Ok(())
        });
        listening
            .recv_timeout(Duration::from_secs(5))
            .context("stream receiver not listening")?;
        let stopped = stop.clone();
        let sender = lab.lan.spawn(move || {
            let mut stream = TcpStream::connect_timeout(
                &SocketAddrV4::new(WAN_HOST, STREAM_PORT).into(),
                Duration::from_secs(5),
            )?;
            stream.set_write_timeout(Some(Duration::from_millis(500)))?;
            let chunk = vec![0x5a; 8192];
            while !stopped.load(Ordering::Relaxed) {
                match stream.write_all(&chunk) {
                    Ok(()) => {}
                    Err(err)
                        if matches!(
                            err.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(err) => return Err(err.into()),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        });
        Ok(Stream {
            stop,
            reads,
            threads: vec![receiver, sender],
        })
    }

    pub(super) fn times(&self) -> Vec<Instant> {
        self.reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until data has arrived for `flowing` after `since` (the transfer resumed).
    pub(super) fn wait_after(&self, since: Instant, flowing: Duration, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            let times = self.times();
            if let (Some(first), Some(last)) = (
                times
                    .iter()
                    .find(|time| **time > since + Duration::from_millis(1)),
                times.last(),
            ) && *last > since
                && *last - *first >= flowing
            {
                // The first read after `since` may still be data sent before it: what
                // counts is that reads go on.
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The longest pause between two reads, from the last read before `since` on.
    pub(super) fn longest_gap_since(&self, since: Instant) -> Duration {
        let times = self.times();
        let first = times
            .iter()
            .rposition(|time| *time <= since)
            .unwrap_or_default();
        times[first..]
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default()
    }

    pub(super) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The receiver may wait in accept if the sender never connected: it is a detached
        // thread of a namespace about to be removed; the sender ends at its next write.
        for thread in self.threads.drain(..) {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

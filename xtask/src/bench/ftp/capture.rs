//! Kernel-timestamped captures of the 227 replies at both ends of a lab, read back per session.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use gateway_tests::{
    lab::{self, Lab},
    netns::Netns,
};

/// Captures of 227 replies on the server's interface (as it sends them) and on the client's
/// (as it receives them).
pub(super) struct ReplyCapture {
    server: Tcpdump,
    client: Tcpdump,
}

/// TCP segments from port 21 whose payload starts with "227 ". A filter in the kernel: the
/// captures see one packet per session, so they cost the load next to nothing.
pub(super) const REPLY_227_FILTER: &str =
    "tcp src port 21 and tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x32323720";

impl ReplyCapture {
    pub(super) fn start(lab: &Lab, prefix: &str, phase: &str) -> anyhow::Result<ReplyCapture> {
        let file = |side: &str| std::env::temp_dir().join(format!("{prefix}-{phase}-{side}.pcap"));
        Ok(ReplyCapture {
            server: Tcpdump::start(&lab.inside, file("server"))?,
            client: Tcpdump::start(&lab.outside, file("client"))?,
        })
    }

    /// Transit times in us of the replies seen on both sides, matched by the client's port
    /// (one 227 per session; a retransmission counts from its first copy).
    pub(super) fn finish(self) -> anyhow::Result<Vec<f64>> {
        let sent = first_reply_per_client_port(&self.server.finish()?)?;
        let received = first_reply_per_client_port(&self.client.finish()?)?;
        Ok(received
            .iter()
            .filter_map(|(port, at)| {
                let sent = sent.get(port)?;
                Some((*at as f64 - *sent as f64) / 1000.0)
            })
            .collect())
    }
}

pub(super) struct Tcpdump {
    child: Child,
    file: PathBuf,
}

impl Tcpdump {
    /// Starts capturing on the host's interface; returns once tcpdump is listening.
    pub(super) fn start(netns: &Netns, file: PathBuf) -> anyhow::Result<Tcpdump> {
        let mut child = netns
            .command("tcpdump")
            .args(["-i", lab::HOST_IF, "-U", "-s", "256", "-w"])
            .arg(&file)
            .args(["--time-stamp-precision=nano", REPLY_227_FILTER])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start tcpdump (cargo xtask setup installs it)")?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line)?;
        if !line.contains("listening on") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("tcpdump in {} did not start: {}", netns.name(), line.trim());
        }
        Ok(Tcpdump { child, file })
    }

    /// Stops tcpdump (SIGINT: it writes out what it holds) and returns the capture's packets
    /// with their timestamps in ns.
    pub(super) fn finish(mut self) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
        stop_gently(&mut self.child);
        let bytes =
            std::fs::read(&self.file).with_context(|| format!("read {}", self.file.display()))?;
        let _ = std::fs::remove_file(&self.file);
        read_pcap(&bytes)
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// SIGINT, then waits up to 10 s before killing.
pub(super) fn stop_gently(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The packets of a pcap file (microsecond or nanosecond, either byte order), each with its
/// timestamp in ns.
pub(super) fn read_pcap(bytes: &[u8]) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
    let header = bytes
        .get(..24)
        .context("pcap file shorter than its header")?;
    let magic = [header[0], header[1], header[2], header[3]];
    let (little, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => bail!("not a pcap file (magic {magic:02x?})"),
    };
    let word = |at: &[u8]| {
        let word = [at[0], at[1], at[2], at[3]];
        if little {
            u32::from_le_bytes(word)
        } else {
            u32::from_be_bytes(word)
        }
    };
    let mut packets = Vec::new();
    let mut rest = &bytes[24..];
    while !rest.is_empty() {
        let record = rest.get(..16).context("pcap record header cut short")?;
        let (seconds, fraction, length) =
            (word(&record[0..]), word(&record[4..]), word(&record[8..]));
        let length = length as usize;
        let data = rest.get(16..16 + length).context("pcap record cut short")?;
        let fraction_ns = if nanos {
            u64::from(fraction)
        } else {
            u64::from(fraction) * 1000
        };
        packets.push((
            u64::from(seconds) * 1_000_000_000 + fraction_ns,
            data.to_vec(),
        ));
        rest = &rest[16 + length..];
    }
    Ok(packets)
}

/// The first 227 each client port received or was sent, by timestamp (Ethernet frames).
pub(super) fn first_reply_per_client_port(
    packets: &[(u64, Vec<u8>)],
) -> anyhow::Result<HashMap<u16, u64>> {
    let mut first = HashMap::new();
    for (at, frame) in packets {
        let Some(summary) = gateway_tests::packet::summarize(frame) else {
            continue;
        };
        if !gateway_tests::packet::payload(frame)
            .is_some_and(|payload| payload.starts_with(b"227 "))
        {
            continue;
        }
        first.entry(summary.dst_port).or_insert(*at);
    }
    Ok(first)
}

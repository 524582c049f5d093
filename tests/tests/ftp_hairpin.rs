//! Hairpinned FTP end to end, in namespaces: an inside client (10.0.0.3, a host of its own on
//! the server's LAN) uses the published FTP server (10.0.0.2) through its public address
//! 203.0.113.1:21, with real servers and clients, in passive and active mode, on TC and on
//! native XDP.
//!
//! The two hosts share a link, so a private address in a `227` would reach the server
//! directly, and most clients ignore the address in a `227` anyway. What shows the ALG on the
//! path is what the hosts received: every `227` the client got names the public address and
//! every `PORT`/`EPRT` the server got names the client's public mapping (from captures), the
//! ALG lists the session with both public addresses and its two expectations, and no packet
//! ever went between the two hosts directly. A control without the ALG shows the private
//! address leaking and the transfers failing.

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    time::Duration,
};

use gateway_tests::{
    TempFile,
    capture::{Capture, Frame},
    check_environment,
    ftp::{self, Client, Direction, FtpServer, Mode, Script, ServerKind},
    gateway::GatewayProcess,
    lab::{self, HOST_IF, INSIDE_CLIENT, Lab, LabOptions},
    netns::{Netns, unique_prefix},
    packet::{Ipv4Summary, audit_checksums, payload, summarize},
    transfer::pattern,
};
use serde_json::Value;

const MIB: usize = 1 << 20;
const PUBLISHED: SocketAddrV4 = SocketAddrV4::new(lab::PUBLIC, 21);

/// The FTP server published at 203.0.113.1:21 (with the ALG when `alg`), the inside network
/// masqueraded behind the same address, on `hook`.
fn config(hook: &str, alg: bool) -> String {
    format!(
        "[interfaces]\ninside = \"{}\"\noutside = \"{}\"\n\n[dataplane]\nhook = \"{hook}\"\n\n\
         [[publish]]\npublic = \"{PUBLISHED}\"\nprivate = \"{}:21\"\nprotocol = \"tcp\"\n{}\n\
         [masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"{}\"]\n",
        lab::ROUTER_INSIDE_IF,
        lab::ROUTER_OUTSIDE_IF,
        lab::SERVER,
        if alg { "alg = \"ftp\"\n" } else { "" },
        lab::PUBLIC,
    )
}

/// The lab with a second inside host, the gateway, and captures on the client's link and on
/// the inside link to the router (what the router sends onto the LAN, to either host).
struct Hairpin {
    lab: Lab,
    client: Netns,
    gateway: GatewayProcess,
    _config: TempFile,
    scratch: PathBuf,
}

impl Hairpin {
    /// Wire-like end hosts and router (no offloads), so every checksum captured is a real one.
    fn new(hook: &str, alg: bool) -> Hairpin {
        check_environment().expect("environment");
        let prefix = unique_prefix();
        let lab = Lab::up(
            &prefix,
            LabOptions {
                endpoint_tx_offload: false,
                router_tx_offload: false,
            },
        )
        .expect("lab up");
        let client = lab.add_inside_client(false).expect("inside client");
        let config = TempFile::write(&format!("{prefix}-gateway.toml"), &config(hook, alg));
        let gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("start gateway");
        let scratch = std::env::temp_dir().join(format!("{prefix}-files"));
        std::fs::create_dir_all(&scratch).expect("scratch directory");
        Hairpin {
            lab,
            client,
            gateway,
            _config: config,
            scratch,
        }
    }

    /// One transfer from the inside client to the published address.
    fn transfer(&self, client: Client, mode: Mode, direction: Direction, name: &str, local: &Path) {
        ftp::transfer(
            client,
            mode,
            direction,
            &self.client,
            INSIDE_CLIENT,
            PUBLISHED,
            name,
            local,
        )
        .unwrap_or_else(|err| {
            panic!(
                "{client:?} {mode:?} {direction:?}: {err:#}\ngateway:\n{}",
                self.gateway.output()
            )
        });
    }

    /// Every mode of each of `clients`, a download and an upload each, sha256 checked;
    /// returns how many transfers ran.
    fn transfers(&self, server: &FtpServer, clients: &[Client]) -> usize {
        let content = pattern(13, MIB);
        server.put("file", &content).expect("put file");
        let upload = self.scratch.join("upload");
        std::fs::write(&upload, &content).expect("write upload");
        let mut count = 0;
        for &client in clients {
            for &mode in client.modes() {
                let case = format!("{:?} {client:?} {mode:?}", server.kind());
                let local = self
                    .scratch
                    .join(format!("{:?}-{client:?}-{mode:?}", server.kind()));
                self.transfer(client, mode, Direction::Download, "file", &local);
                assert_eq!(
                    ftp::sha256_file(&local).expect("read download"),
                    ftp::sha256(&content),
                    "{case} download"
                );
                let name = format!("{client:?}-{mode:?}");
                self.transfer(client, mode, Direction::Upload, &name, &upload);
                assert_eq!(
                    server.uploaded(&name).expect("uploaded file"),
                    ftp::sha256(&content),
                    "{case} upload"
                );
                count += 2;
            }
        }
        count
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self
            .gateway
            .ask(&args)
            .unwrap_or_else(|err| panic!("gateway {args:?}: {err:#}"));
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{args:?}: {err}: {text}"))
    }

    /// Stops the gateway and returns its output (with the final counters).
    fn stop(&mut self) -> String {
        self.gateway.stop().expect("stop gateway");
        self.gateway.output()
    }
}

impl Drop for Hairpin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// The TCP payload of every frame a host received that `wanted` picks, in capture order, as
/// text (retransmissions included: the checks only look for what is or is not there).
fn received_text(frames: &[Frame], wanted: impl Fn(&Ipv4Summary) -> bool) -> String {
    let mut text = String::new();
    for frame in frames.iter().filter(|frame| !frame.outgoing) {
        let Some(summary) = summarize(&frame.bytes) else {
            continue;
        };
        if summary.proto == 6 && wanted(&summary) {
            text.push_str(&String::from_utf8_lossy(
                payload(&frame.bytes).unwrap_or(&[]),
            ));
        }
    }
    text
}

/// The lines the client received on its control connections (from the published endpoint).
fn client_control_text(client_frames: &[Frame]) -> String {
    received_text(client_frames, |s| {
        (s.src, s.src_port) == (*PUBLISHED.ip(), PUBLISHED.port()) && s.dst == INSIDE_CLIENT
    })
}

/// The lines the server received on its control port.
fn server_control_text(lan_frames: &[Frame]) -> String {
    received_text(lan_frames, |s| (s.dst, s.dst_port) == (lab::SERVER, 21))
}

/// Every checksum of every frame the hosts received is right, and their kernels counted no
/// checksum errors.
fn assert_checksums(setup: &Hairpin, captures: &[(&str, &[Frame])]) {
    for (name, frames) in captures {
        let audit = audit_checksums(frames.iter());
        assert!(audit.checked > 20, "{name}: only {} frames", audit.checked);
        assert!(audit.bad.is_empty(), "{name}: {:?}", audit.bad);
    }
    for netns in [&setup.lab.inside, &setup.client] {
        let errors = netns.checksum_error_counters();
        assert!(
            errors.iter().all(|(_, n)| *n == 0),
            "checksum errors in {}: {errors:?}",
            netns.name()
        );
    }
}

/// The client and the server never exchanged a packet directly: everything between them
/// went through the gateway (and came from, or went to, a public address).
fn assert_only_through_the_gateway(client_frames: &[Frame]) {
    for frame in client_frames {
        let Some(summary) = summarize(&frame.bytes) else {
            continue;
        };
        assert!(
            summary.src != lab::SERVER && summary.dst != lab::SERVER,
            "a packet between the hosts, past the gateway: {summary}"
        );
    }
}

/// What the ALG's rewriting left in the lines: every passive reply the client got names the
/// public address (and 229s came), every active command the server got names the client's
/// public mapping (`PORT` and `EPRT`), and no line names a private address.
fn assert_rewritten(client_frames: &[Frame], lan_frames: &[Frame]) {
    let replies = client_control_text(client_frames);
    assert!(
        replies.contains("227 Entering Passive Mode (203,0,113,1,"),
        "no rewritten 227 at the client:\n{replies}"
    );
    assert!(replies.contains("229 "), "no 229 at the client:\n{replies}");
    assert!(!replies.contains("10,0,0,"), "{replies}");
    let commands = server_control_text(lan_frames);
    assert!(
        commands.contains("PORT 203,0,113,1,"),
        "no rewritten PORT at the server:\n{commands}"
    );
    assert!(
        commands.contains("EPRT |1|203.0.113.1|"),
        "no rewritten EPRT at the server:\n{commands}"
    );
    assert!(!commands.contains("10,0,0,"), "{commands}");
    assert!(!commands.contains("|10.0.0."), "{commands}");
}

/// The ALG's view while a hairpinned session holds one announcement each way: the session
/// with both public addresses, and its two expectations, each for the other host only.
fn assert_listed(setup: &Hairpin) {
    let held = Script::spawn(
        &setup.client,
        "announce_both.py",
        &[&lab::PUBLIC.to_string(), &INSIDE_CLIENT.to_string(), "6"],
    )
    .expect("announcing client");
    let mut expectations = Value::Null;
    for _ in 0..100 {
        expectations = setup.json(&["expectations"]);
        if expectations.as_array().is_some_and(|rows| rows.len() >= 2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let sessions = setup.json(&["sessions", "--ftp"]);
    let output = held
        .finish(Duration::from_secs(30))
        .unwrap_or_else(|err| panic!("{err:#}\ngateway:\n{}", setup.gateway.output()));
    let lines: Vec<&str> = output.lines().collect();
    // The 227 as the client's own FTP library received it.
    let pasv = lines.first().copied().unwrap_or_default();
    let announced = pasv
        .strip_prefix("227 Entering Passive Mode (203,0,113,1,")
        .and_then(|rest| rest.split(')').next())
        .and_then(|ports| {
            let (high, low) = ports.split_once(',')?;
            Some(high.parse::<u16>().ok()? * 256 + low.parse::<u16>().ok()?)
        })
        .unwrap_or_else(|| panic!("the client's 227 does not name the public address: {output}"));
    let listening: u16 = lines
        .get(1)
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no listening port: {output}"));
    // The server took the rewritten PORT: vsftpd refuses one naming any address but the
    // control connection's peer, which for it is the client's mapping.
    assert!(
        lines.get(2).is_some_and(|reply| reply.starts_with("200")),
        "{output}"
    );

    let rows = sessions.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{sessions}");
    let row = &rows[0];
    let field = |name: &str| row[name].as_str().unwrap_or_default().to_owned();
    assert!(field("client").starts_with("10.0.0.3:"), "{row}");
    assert!(field("client_seen").starts_with("203.0.113.1:"), "{row}");
    assert_eq!(field("server"), "10.0.0.2:21", "{row}");
    assert_eq!(field("server_seen"), "203.0.113.1:21", "{row}");
    assert_eq!(field("user"), "anonymous", "{row}");
    assert_eq!(row["pending_expectations"], 2, "{row}");

    let rows = expectations.as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{expectations}");
    let of_kind = |kind: &str| {
        rows.iter()
            .find(|row| row["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} expectation: {expectations}"))
    };
    // Passive: from the client only, to the public data endpoint of the 227, leading to the
    // server (from the client's mapping).
    let passive = of_kind("hairpin-to-server");
    assert_eq!(passive["peer"], "10.0.0.3", "{passive}");
    assert_eq!(passive["endpoint"], format!("203.0.113.1:{announced}"));
    let target = passive["target"].as_str().unwrap_or_default();
    assert!(
        target.starts_with("10.0.0.2:") && target.ends_with("from the peer's mapping"),
        "{passive}"
    );
    // Active: from the server only, to the client's public mapping, leading to the port the
    // client listens on, from the server's public address.
    let active = of_kind("hairpin-to-client");
    assert_eq!(active["peer"], "10.0.0.2", "{active}");
    assert!(
        active["endpoint"]
            .as_str()
            .is_some_and(|endpoint| endpoint.starts_with("203.0.113.1:")),
        "{active}"
    );
    assert_eq!(
        active["target"],
        format!("10.0.0.3:{listening} from 203.0.113.1"),
        "{active}"
    );
}

/// The final counters: every data connection came through an expectation, nothing was
/// hairpinned by the fast path alone, every control packet went to the agent over its tap,
/// none refused or lost.
fn assert_clean(gateway: &GatewayProcess, output: &str, transfers: usize) {
    let used = gateway.final_counter("expectation_used");
    assert!(
        used >= transfers as u64,
        "{used} expectations used for {transfers} transfers\n{output}"
    );
    assert!(
        gateway.final_counter("alg_sessions_opened") > transfers as u64,
        "{output}"
    );
    gateway.assert_final_zero(&[
        "hairpin_created",
        "alg_violations",
        "alg_drop_stream_error",
        "alg_drop_malformed",
        "alg_drop_no_port",
        "drop_punt_failed",
        "alg_send_failed",
        "alg_expectation_install_failed",
        "alg_punt_ring_packets",
    ]);
    assert!(gateway.final_counter("punted") > 0, "{output}");
    assert_eq!(
        gateway.final_counter("alg_punt_tap_packets"),
        gateway.final_counter("alg_handled"),
        "{output}"
    );
}

#[test]
fn tc_hairpinned_clients_use_a_published_ftp_server_in_every_mode() {
    let mut setup = Hairpin::new("tc", true);
    let client_capture = Capture::start(&setup.client, HOST_IF).expect("capture client");
    let lan_capture = Capture::start(&setup.lab.inside, HOST_IF).expect("capture inside link");
    let vsftpd =
        FtpServer::start(ServerKind::Vsftpd, &setup.lab.inside, lab::SERVER).expect("vsftpd");
    assert_listed(&setup);
    let mut transfers = setup.transfers(&vsftpd, &[Client::Curl, Client::Lftp, Client::Ftplib]);
    drop(vsftpd);
    let pyftpdlib =
        FtpServer::start(ServerKind::Pyftpdlib, &setup.lab.inside, lab::SERVER).expect("pyftpdlib");
    transfers += setup.transfers(&pyftpdlib, &[Client::Curl]);
    let client_frames = client_capture.finish().expect("client capture");
    let lan_frames = lan_capture.finish().expect("inside link capture");
    assert_rewritten(&client_frames, &lan_frames);
    assert_only_through_the_gateway(&client_frames);
    assert_checksums(
        &setup,
        &[("client", &client_frames), ("inside link", &lan_frames)],
    );
    let output = setup.stop();
    assert_clean(&setup.gateway, &output, transfers);
    println!("hairpinned, TC: {transfers} transfers");
}

/// Native XDP: control packets to the agent's tap through the devmap, the hairpinned data
/// connections translated and redirected by XDP.
#[test]
fn native_xdp_hairpinned_clients_use_a_published_ftp_server() {
    let mut setup = Hairpin::new("xdp", true);
    let _receivers = setup
        .lab
        .accept_xdp_redirects()
        .expect("XDP_PASS on the end hosts");
    let client_capture = Capture::start(&setup.client, HOST_IF).expect("capture client");
    let lan_capture = Capture::start(&setup.lab.inside, HOST_IF).expect("capture inside link");
    let vsftpd =
        FtpServer::start(ServerKind::Vsftpd, &setup.lab.inside, lab::SERVER).expect("vsftpd");
    assert_listed(&setup);
    let transfers = setup.transfers(&vsftpd, &[Client::Curl]);
    let client_frames = client_capture.finish().expect("client capture");
    let lan_frames = lan_capture.finish().expect("inside link capture");
    assert_rewritten(&client_frames, &lan_frames);
    assert_only_through_the_gateway(&client_frames);
    assert_checksums(
        &setup,
        &[("client", &client_frames), ("inside link", &lan_frames)],
    );
    let output = setup.stop();
    assert!(output.contains("hook=xdp"), "{output}");
    assert!(setup.gateway.final_counter("redirected") > 0, "{output}");
    assert_clean(&setup.gateway, &output, transfers);
}

/// The control: without `alg`, the hairpinned control connection is translated by the fast
/// path alone, the client gets the server's private address in the 227, and neither mode
/// works (vsftpd takes data connections and PORT addresses only from the control
/// connection's peer, the client's mapping).
#[test]
fn without_the_alg_a_hairpinned_client_gets_the_private_address_and_no_transfer() {
    let mut setup = Hairpin::new("tc", false);
    let client_capture = Capture::start(&setup.client, HOST_IF).expect("capture client");
    let server =
        FtpServer::start(ServerKind::Vsftpd, &setup.lab.inside, lab::SERVER).expect("vsftpd");
    server.put("file", &pattern(1, 4096)).expect("put");
    let local = setup.scratch.join("file");
    for mode in [Mode::Pasv, Mode::Port] {
        let result = ftp::transfer(
            Client::Curl,
            mode,
            Direction::Download,
            &setup.client,
            INSIDE_CLIENT,
            PUBLISHED,
            "file",
            &local,
        );
        assert!(result.is_err(), "{mode:?} worked without the ALG");
    }
    let client_frames = client_capture.finish().expect("client capture");
    let replies = client_control_text(&client_frames);
    assert!(
        replies.contains("227 Entering Passive Mode (10,0,0,2,"),
        "{replies}"
    );
    let output = setup.stop();
    assert_eq!(setup.gateway.final_counter("punted"), 0, "{output}");
    assert!(
        setup.gateway.final_counter("hairpin_created") > 0,
        "{output}"
    );
}

//! The FTP ALG end to end, in namespaces, with real servers and clients: vsftpd and pyftpdlib;
//! curl, lftp and Python's ftplib; PASV, EPSV, PORT and EPRT; downloads and uploads checked
//! by sha256; an outside client reaching a published server (the classic case) and inside
//! clients reaching outside servers through the masquerade; lines split across segments;
//! rewrites that lengthen and shorten lines with the connection going on; a negative control.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use gateway_tests::{
    TempFile,
    capture::{Capture, Frame},
    check_environment,
    ftp::{self, Client, Direction, FtpServer, Mode, Script, ServerKind},
    gateway::GatewayProcess,
    lab::{self, HOST_IF, Lab, LabOptions},
    netns::{Netns, unique_prefix},
    packet::{audit_checksums, payload, summarize},
    transfer::{hex, pattern},
};

const MIB: usize = 1 << 20;

const INTERFACES: &str = "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n";

/// The published FTP server at 203.0.113.1:21 -> 10.0.0.2:21 with the ALG.
fn published_config(alg: bool) -> String {
    format!(
        "{INTERFACES}\n[[publish]]\npublic = \"{}:21\"\nprivate = \"{}:21\"\nprotocol = \"tcp\"\n{}",
        lab::PUBLIC,
        lab::SERVER,
        if alg { "alg = \"ftp\"\n" } else { "" }
    )
}

/// The inside network masqueraded behind 203.0.113.1, with the ALG on port 21 (the default).
fn masquerade_config(ports: &str) -> String {
    format!(
        "{INTERFACES}\n[masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"{}\"]\nports = \"{ports}\"\n",
        lab::PUBLIC
    )
}

/// A lab with the gateway running `config`.
struct Setup {
    lab: Lab,
    gateway: GatewayProcess,
    _config: TempFile,
    scratch: PathBuf,
}

impl Setup {
    fn new(config: &str) -> Setup {
        Setup::with_options(config, LabOptions::default())
    }

    fn with_options(config: &str, options: LabOptions) -> Setup {
        check_environment().expect("environment");
        let prefix = unique_prefix();
        let lab = Lab::up(&prefix, options).expect("lab up");
        let config = TempFile::write(&format!("{prefix}-gateway.toml"), config);
        let gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("start gateway");
        let scratch = std::env::temp_dir().join(format!("{prefix}-files"));
        std::fs::create_dir_all(&scratch).expect("scratch directory");
        Setup {
            lab,
            gateway,
            _config: config,
            scratch,
        }
    }

    /// Stops the gateway and returns its output (with the final counters).
    fn stop(&mut self) -> String {
        self.gateway.stop().expect("stop gateway");
        self.gateway.output()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // Stopped cleanly before the lab (dropped first) deletes its namespaces and kills
        // what runs in them: a killed agent leaves its record of sysctls behind.
        let _ = self.gateway.stop();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Runs every client in every mode it has, a download and an upload each, against `server`
/// from `client_ns`; returns how many transfers ran.
fn all_clients(
    setup: &Setup,
    server: &FtpServer,
    client_ns: &Netns,
    client_addr: Ipv4Addr,
    server_addr: SocketAddrV4,
) -> usize {
    let content = pattern(7, MIB);
    server.put("file", &content).expect("put file");
    let upload = setup.scratch.join("upload");
    std::fs::write(&upload, &content).expect("write upload");
    let mut transfers = 0;
    for client in [Client::Curl, Client::Lftp, Client::Ftplib] {
        for &mode in client.modes() {
            let case = format!("{:?} {client:?} {mode:?}", server.kind());
            let local = setup.scratch.join(format!("{client:?}-{mode:?}"));
            ftp::transfer(
                client,
                mode,
                Direction::Download,
                client_ns,
                client_addr,
                server_addr,
                "file",
                &local,
            )
            .unwrap_or_else(|err| {
                panic!(
                    "{case} download: {err:#}\ngateway:\n{}",
                    setup.gateway.output()
                )
            });
            assert_eq!(
                ftp::sha256_file(&local).expect("read download"),
                ftp::sha256(&content),
                "{case} download"
            );
            let name = format!("{client:?}-{mode:?}");
            ftp::transfer(
                client,
                mode,
                Direction::Upload,
                client_ns,
                client_addr,
                server_addr,
                &name,
                &upload,
            )
            .unwrap_or_else(|err| {
                panic!(
                    "{case} upload: {err:#}\ngateway:\n{}",
                    setup.gateway.output()
                )
            });
            assert_eq!(
                server.uploaded(&name).expect("uploaded file"),
                ftp::sha256(&content),
                "{case} upload"
            );
            transfers += 2;
        }
    }
    transfers
}

/// The gateway's final counters: every data connection came through an expectation, no
/// control packet was refused, none was lost on the punt path.
fn assert_clean_alg(output: &str, gateway: &GatewayProcess, transfers: usize) {
    let used = gateway.final_counter("expectation_used");
    assert!(
        used >= transfers as u64,
        "{used} expectations used for {transfers} transfers\n{output}"
    );
    gateway.assert_final_zero(&[
        "alg_violations",
        "alg_drop_stream_error",
        "alg_drop_malformed",
        "drop_punt_failed",
        "alg_send_failed",
        "alg_expectation_install_failed",
    ]);
    assert!(gateway.final_counter("punted") > 0, "{output}");
    // On TC (what veth gets) every control packet came over the agent's tap, none through
    // the ring: the ring's wake-up is the expensive one.
    assert_eq!(
        gateway.final_counter("alg_punt_tap_packets"),
        gateway.final_counter("alg_handled"),
        "{output}"
    );
    assert!(
        gateway.final_counter("alg_punt_tap_packets") > 0,
        "{output}"
    );
    assert_eq!(
        gateway.final_counter("alg_punt_ring_packets"),
        0,
        "{output}"
    );
}

fn published_server_all_clients(kind: ServerKind) {
    let mut setup = Setup::new(&published_config(true));
    let server = FtpServer::start(kind, &setup.lab.inside, lab::SERVER).expect("server");
    let transfers = all_clients(
        &setup,
        &server,
        &setup.lab.outside,
        lab::CLIENT,
        SocketAddrV4::new(lab::PUBLIC, 21),
    );
    for netns in [&setup.lab.inside, &setup.lab.outside] {
        assert!(
            netns.checksum_error_counters().iter().all(|(_, n)| *n == 0),
            "checksum errors in {}: {:?}",
            netns.name(),
            netns.checksum_error_counters()
        );
    }
    let output = setup.stop();
    assert_clean_alg(&output, &setup.gateway, transfers);
    println!("{kind:?} published: {transfers} transfers");
}

#[test]
fn outside_clients_reach_a_published_vsftpd_in_every_mode() {
    published_server_all_clients(ServerKind::Vsftpd);
}

#[test]
fn outside_clients_reach_a_published_pyftpdlib_in_every_mode() {
    published_server_all_clients(ServerKind::Pyftpdlib);
}

fn masqueraded_clients_all_modes(kind: ServerKind) {
    let mut setup = Setup::new(&masquerade_config("1024-65535"));
    let server = FtpServer::start(kind, &setup.lab.outside, lab::CLIENT).expect("server");
    let transfers = all_clients(
        &setup,
        &server,
        &setup.lab.inside,
        lab::SERVER,
        SocketAddrV4::new(lab::CLIENT, 21),
    );
    let output = setup.stop();
    // Half the transfers are active (PORT, EPRT): their data connections come in, and only
    // the ALG's expectations let them through. The passive half would work through the
    // masquerade with no ALG at all; what they show is that the ALG, on their path, broke
    // nothing. That it was on their path: every transfer's control connection (one per
    // client run) was a session of the ALG.
    assert_clean_alg(&output, &setup.gateway, transfers / 2);
    assert_eq!(
        setup.gateway.final_counter("alg_sessions_opened"),
        transfers as u64,
        "control sessions through the ALG\n{output}"
    );
    println!("{kind:?} outside, masqueraded clients: {transfers} transfers");
}

#[test]
fn inside_clients_reach_an_outside_pyftpdlib_in_every_mode() {
    masqueraded_clients_all_modes(ServerKind::Pyftpdlib);
}

#[test]
fn inside_clients_reach_an_outside_vsftpd_in_every_mode() {
    masqueraded_clients_all_modes(ServerKind::Vsftpd);
}

#[test]
fn hundred_mebibytes_each_way_through_the_alg() {
    // Published server, passive download; masqueraded client, active upload.
    let setup = Setup::new(&format!(
        "{}\n[masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"{}\"]\n",
        published_config(true),
        lab::PUBLIC
    ));
    let content = pattern(100, 100 * MIB);
    let inside_server = FtpServer::start(ServerKind::Vsftpd, &setup.lab.inside, lab::SERVER)
        .expect("inside server");
    inside_server.put("big", &content).expect("put");
    let local = setup.scratch.join("big");
    ftp::transfer(
        Client::Curl,
        Mode::Pasv,
        Direction::Download,
        &setup.lab.outside,
        lab::CLIENT,
        SocketAddrV4::new(lab::PUBLIC, 21),
        "big",
        &local,
    )
    .unwrap_or_else(|err| panic!("download: {err:#}\n{}", setup.gateway.output()));
    assert_eq!(ftp::sha256_file(&local).unwrap(), ftp::sha256(&content));

    let outside_server = FtpServer::start(ServerKind::Pyftpdlib, &setup.lab.outside, lab::CLIENT)
        .expect("outside server");
    ftp::transfer(
        Client::Curl,
        Mode::Eprt,
        Direction::Upload,
        &setup.lab.inside,
        lab::SERVER,
        SocketAddrV4::new(lab::CLIENT, 21),
        "big",
        &local,
    )
    .unwrap_or_else(|err| panic!("upload: {err:#}\n{}", setup.gateway.output()));
    assert_eq!(
        outside_server.uploaded("big").unwrap(),
        ftp::sha256(&content)
    );
    println!("100 MiB each way: sha256 {}", hex(&ftp::sha256(&content)));
}

#[test]
fn without_the_alg_passive_mode_from_outside_fails() {
    // Negative control: the same published server, no `alg`. The control session works (the
    // publish translates it statelessly); only the data connection fails: the 227 names
    // 10.0.0.2, which the outside client cannot reach, and nothing opens the announced port
    // on the public address (where curl connects by default, ignoring the 227's address).
    let mut setup = Setup::new(&published_config(false));
    let _server =
        FtpServer::start(ServerKind::Vsftpd, &setup.lab.inside, lab::SERVER).expect("server");
    for mode in ["pasv", "epsv"] {
        let probe = pasv_probe(&setup, mode);
        let replies = &probe["replies"];
        let reply = |name: &str| replies[name].as_str().unwrap_or_default().to_owned();
        assert!(reply("greeting").starts_with("220"), "{mode}: {probe}");
        assert!(reply("user").starts_with("230"), "{mode}: login: {probe}");
        assert!(reply("quit").starts_with("221"), "{mode}: {probe}");
        let attempts = probe["data"].as_array().cloned().unwrap_or_default();
        if mode == "pasv" {
            // Untouched: the server's private address reached the client.
            assert!(
                reply("passive").starts_with("227") && reply("passive").contains("(10,0,0,2,"),
                "{probe}"
            );
            assert_eq!(attempts.len(), 2, "{probe}");
        } else {
            assert!(reply("passive").starts_with("229"), "{probe}");
            assert_eq!(attempts.len(), 1, "{probe}");
        }
        for attempt in &attempts {
            assert_ne!(
                attempt["outcome"], "connected",
                "{mode}: a data connection worked without the ALG: {probe}"
            );
        }
    }
    // The control connection itself was translated statelessly, not punted.
    let output = setup.stop();
    assert_eq!(setup.gateway.final_counter("punted"), 0, "{output}");
}

/// `pasv_probe.py` from the outside client to the published server: its JSON report.
fn pasv_probe(setup: &Setup, mode: &str) -> serde_json::Value {
    let output = Script::spawn(
        &setup.lab.outside,
        "pasv_probe.py",
        &[&lab::PUBLIC.to_string(), mode],
    )
    .expect("pasv probe")
    .finish(Duration::from_secs(30))
    .unwrap_or_else(|err| panic!("{mode} probe: {err:#}\n{}", setup.gateway.output()));
    serde_json::from_str(output.trim()).unwrap_or_else(|err| panic!("{err}: {output}"))
}

/// The TCP payload stream of the connection between `a` and `b`, as one side saw it: per
/// direction, (first sequence number, bytes in order, sequence number of the FIN).
struct Stream {
    isn: u32,
    bytes: Vec<u8>,
    fin_seq: Option<u32>,
}

fn stream(frames: &[Frame], from: SocketAddrV4, to: SocketAddrV4) -> Stream {
    let mut segments = std::collections::BTreeMap::new();
    let mut isn = None;
    let mut fin_seq = None;
    for frame in frames {
        let bytes = &frame.bytes;
        if bytes.len() < 54 || bytes[12..14] != [0x08, 0x00] || bytes[23] != 6 {
            continue;
        }
        let ihl = usize::from(bytes[14] & 0x0f) * 4;
        let ip = &bytes[14..];
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        let tcp = &ip[ihl..total];
        let src = SocketAddrV4::new(
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            u16::from_be_bytes([tcp[0], tcp[1]]),
        );
        let dst = SocketAddrV4::new(
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            u16::from_be_bytes([tcp[2], tcp[3]]),
        );
        if src != from || dst != to {
            continue;
        }
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let flags = tcp[13];
        let data = &tcp[usize::from(tcp[12] >> 4) * 4..];
        if flags & 0x02 != 0 {
            isn = Some(seq);
        }
        if flags & 0x01 != 0 {
            fin_seq = Some(seq.wrapping_add(data.len() as u32));
        }
        if !data.is_empty() {
            segments.insert(seq, data.to_vec());
        }
    }
    let isn = isn.expect("the capture holds the SYN");
    let mut bytes = Vec::new();
    let mut next = isn.wrapping_add(1);
    for (seq, data) in segments {
        // Retransmissions and overlaps: keep only what extends the stream.
        let skip = next.wrapping_sub(seq) as usize;
        if skip < data.len() && seq.wrapping_sub(next) as i32 <= 0 {
            bytes.extend_from_slice(&data[skip..]);
            next = next.wrapping_add((data.len() - skip) as u32);
        }
    }
    Stream {
        isn,
        bytes,
        fin_seq,
    }
}

#[test]
fn split_227_and_229_replies_longer_and_shorter_with_the_session_going_on() {
    // Public data ports of four digits: the server's 50000 becomes 2xxx. The 227 grows (the
    // public address is longer, and from 2560 on the port's high byte has two digits, so it
    // grows whatever port is drawn), the 229 shrinks (one digit less); the session goes on
    // after each, through the same control connection.
    let mut setup = Setup::new(&format!(
        "{}\n[masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"{}\"]\nports = \"2560-2999\"\n",
        published_config(true),
        lab::PUBLIC
    ));
    let content = pattern(3, 256 * 1024);
    let file = setup.scratch.join("served");
    std::fs::write(&file, &content).unwrap();
    let log = setup.scratch.join("server-commands.log");
    let _server = Script::spawn(
        &setup.lab.inside,
        "split_server.py",
        &[
            &lab::SERVER.to_string(),
            file.to_str().unwrap(),
            log.to_str().unwrap(),
        ],
    )
    .expect("split server");
    ftp::wait_listening(&setup.lab.inside, 21, Duration::from_secs(10)).expect("listening");

    let server_capture = Capture::start(&setup.lab.inside, HOST_IF).expect("capture");
    let client_capture = Capture::start(&setup.lab.outside, HOST_IF).expect("capture");
    // One control connection (lftp keeps it): EPSV + RETR, then PASV + RETR, then QUIT.
    let first = setup.scratch.join("first");
    let second = setup.scratch.join("second");
    let output = setup
        .lab
        .outside
        .command("timeout")
        .args([
            "60",
            "lftp",
            "-d",
            "-e",
            &format!(
                "set net:max-retries 1; set net:timeout 10; set ftp:ssl-allow no; set ftp:passive-mode on; \
                 set ftp:prefer-epsv yes; get a -o {}; set ftp:prefer-epsv no; get b -o {}; bye",
                first.display(),
                second.display()
            ),
            &format!("ftp://anonymous:x@{}", lab::PUBLIC),
        ])
        .output()
        .expect("lftp");
    let server_frames = server_capture.finish().expect("capture");
    let client_frames = client_capture.finish().expect("capture");
    let verbose = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "lftp failed: {verbose}\ngateway:\n{}",
        setup.gateway.output()
    );
    assert_eq!(ftp::sha256_file(&first).unwrap(), ftp::sha256(&content));
    assert_eq!(ftp::sha256_file(&second).unwrap(), ftp::sha256(&content));
    assert_eq!(
        verbose
            .matches("Connecting to 203.0.113.1 (203.0.113.1) port 21")
            .count(),
        1,
        "both transfers must share one control connection:\n{verbose}"
    );

    // The client's control port, from the server-side capture.
    let client_port = server_frames
        .iter()
        .find_map(|frame| {
            let b = &frame.bytes;
            (b.len() > 54
                && b[23] == 6
                && b[26..30] == lab::CLIENT.octets()
                && b[36..38] == [0, 21])
            .then(|| u16::from_be_bytes([b[34], b[35]]))
        })
        .expect("control connection in the server capture");
    let client = SocketAddrV4::new(lab::CLIENT, client_port);
    let sent = stream(&server_frames, SocketAddrV4::new(lab::SERVER, 21), client);
    let received = stream(&client_frames, SocketAddrV4::new(lab::PUBLIC, 21), client);
    let sent_text = String::from_utf8_lossy(&sent.bytes).into_owned();
    let received_text = String::from_utf8_lossy(&received.bytes).into_owned();
    println!("server sent:\n{sent_text}client received:\n{received_text}");

    let sent_lines: Vec<&str> = sent_text.lines().collect();
    let received_lines: Vec<&str> = received_text.lines().collect();
    assert_eq!(sent_lines.len(), received_lines.len());
    let mut growth: i64 = 0;
    let mut rewritten = 0;
    for (before, after) in sent_lines.iter().zip(&received_lines) {
        if before.starts_with("227") {
            assert!(before.contains("(10,0,0,2,195,80)"), "{before}");
            assert!(after.contains("(203,0,113,1,"), "{after}");
            assert!(after.len() > before.len(), "227 grows: {after}");
        } else if before.starts_with("229") {
            assert!(before.contains("(|||50001|)"), "{before}");
            let port: u16 = after
                .split("|||")
                .nth(1)
                .and_then(|rest| rest.split('|').next())
                .and_then(|port| port.parse().ok())
                .unwrap_or_else(|| panic!("229 port: {after}"));
            assert!((2560..=2999).contains(&port), "{after}");
            assert!(after.len() < before.len(), "229 shrinks: {after}");
        } else {
            assert_eq!(before, after, "other lines pass unchanged");
            continue;
        }
        rewritten += 1;
        growth += after.len() as i64 - before.len() as i64;
    }
    assert_eq!(rewritten, 2);
    // Sequence space: everything after the rewrites is shifted by exactly the net growth,
    // down to the FIN, on the client's side of the gateway.
    let sent_fin = sent.fin_seq.expect("server FIN").wrapping_sub(sent.isn);
    let received_fin = received
        .fin_seq
        .expect("client-side FIN")
        .wrapping_sub(received.isn);
    assert_eq!(
        i64::from(received_fin) - i64::from(sent_fin),
        growth,
        "FIN offset equals the net length change"
    );
    // The server's own record: it saw every command, in order, once.
    let commands = std::fs::read_to_string(&log).unwrap();
    assert!(
        commands.contains("EPSV") && commands.contains("PASV"),
        "{commands}"
    );
    assert_eq!(commands.matches("RETR").count(), 2, "{commands}");
    let output = setup.stop();
    assert_eq!(setup.gateway.final_counter("alg_violations"), 0, "{output}");
}

#[test]
fn a_port_command_split_across_segments_is_rewritten_whole() {
    let mut setup = Setup::new(&masquerade_config("2000-2999"));
    let server =
        FtpServer::start(ServerKind::Pyftpdlib, &setup.lab.outside, lab::CLIENT).expect("server");
    let content = pattern(5, MIB);
    server.put("file", &content).expect("put");
    let client = Script::spawn(
        &setup.lab.inside,
        "split_client.py",
        &[&lab::CLIENT.to_string(), &lab::SERVER.to_string(), "file"],
    )
    .expect("split client");
    let output = client
        .finish(Duration::from_secs(60))
        .unwrap_or_else(|err| panic!("{err:#}\ngateway:\n{}", setup.gateway.output()));
    let mut lines = output.lines();
    assert_eq!(lines.next(), Some(hex(&ftp::sha256(&content)).as_str()));
    // pyftpdlib logs the data connection's peer: the gateway's public address, from the
    // rewritten PORT, not the client's private one.
    let log = server.log();
    let port_line = log
        .lines()
        .find(|line| line.contains("PORT"))
        .unwrap_or_else(|| panic!("no PORT in the server log:\n{log}"));
    assert!(port_line.contains("203,0,113,1,"), "{port_line}");
    assert!(!log.contains("10,0,0,2"), "{log}");
    let gateway_output = setup.stop();
    assert_eq!(
        setup.gateway.final_counter("expectation_used"),
        1,
        "{gateway_output}"
    );
}

#[test]
fn checksums_of_alg_packets_are_valid_at_both_ends() {
    // Wire-like packets (no offload anywhere), so that every checksum a host receives is a
    // real one, whether the ALG built it or the fast path translated it.
    let setup = Setup::with_options(
        &published_config(true),
        LabOptions {
            endpoint_tx_offload: false,
            router_tx_offload: false,
        },
    );
    let server =
        FtpServer::start(ServerKind::Vsftpd, &setup.lab.inside, lab::SERVER).expect("server");
    server.put("file", &pattern(9, 64 * 1024)).expect("put");
    let server_capture = Capture::start(&setup.lab.inside, HOST_IF).expect("capture");
    let client_capture = Capture::start(&setup.lab.outside, HOST_IF).expect("capture");
    let local = setup.scratch.join("file");
    ftp::transfer(
        Client::Curl,
        Mode::Pasv,
        Direction::Download,
        &setup.lab.outside,
        lab::CLIENT,
        SocketAddrV4::new(lab::PUBLIC, 21),
        "file",
        &local,
    )
    .expect("download");
    for (side, frames) in [
        ("server", server_capture.finish().unwrap()),
        ("client", client_capture.finish().unwrap()),
    ] {
        let audit = audit_checksums(frames.iter());
        assert!(
            audit.checked > 10,
            "{side}: {} frames checked",
            audit.checked
        );
        assert!(audit.bad.is_empty(), "{side}: {:?}", audit.bad);
    }
}

/// A client with Nagle on (the default) that writes a command in two parts: its second part
/// waits for the first to be acknowledged, which the server cannot do while the gateway holds
/// the unfinished line. The gateway acknowledges the held part itself: the capture at the
/// client shows an ACK of exactly the first part, from the server's public address, and the
/// capture at the server shows that the part never reached it alone (so that ACK cannot be
/// the server's). (Linux clients get out of the wait by themselves after a tail-loss probe;
/// others may not.)
#[test]
fn a_command_written_in_two_parts_is_acknowledged_while_held() {
    let mut setup = Setup::new(&published_config(true));
    let _server =
        FtpServer::start(ServerKind::Vsftpd, &setup.lab.inside, lab::SERVER).expect("server");
    let capture = Capture::start(&setup.lab.outside, HOST_IF).expect("capture");
    let server_capture = Capture::start(&setup.lab.inside, HOST_IF).expect("capture");
    let output = setup
        .lab
        .outside
        .command("python3")
        .args([
            "-c",
            "import socket\n\
             s = socket.create_connection(('203.0.113.1', 21), timeout=5)\n\
             f = s.makefile('rb')\n\
             print(f.readline().decode().strip())\n\
             for part in (b'US', b'ER anonymous\\r\\n'):\n\
             \x20   s.send(part)\n\
             print(f.readline().decode().strip())\n\
             s.send(b'QUIT\\r\\n')\n\
             print(f.readline().decode().strip())\n",
        ])
        .output()
        .expect("client");
    let frames = capture.finish().expect("capture");
    let server_frames = server_capture.finish().expect("capture");
    let gateway_log = setup.stop();
    let lines = String::from_utf8_lossy(&output.stdout).into_owned();
    // What the server received from the client: the line whole, in one segment, first.
    let to_server: Vec<Vec<u8>> = server_frames
        .iter()
        .filter(|frame| !frame.outgoing)
        .filter(|frame| {
            summarize(&frame.bytes).is_some_and(|summary| {
                summary.src == lab::CLIENT && summary.dst == lab::SERVER && summary.dst_port == 21
            })
        })
        .filter_map(|frame| payload(&frame.bytes).map(<[u8]>::to_vec))
        .filter(|payload| !payload.is_empty())
        .collect();
    assert_eq!(
        to_server.first().map(Vec::as_slice),
        Some(&b"USER anonymous\r\n"[..]),
        "the server must get the whole line, never the held part alone: {:?}\n{gateway_log}",
        to_server
            .iter()
            .map(|payload| String::from_utf8_lossy(payload))
            .collect::<Vec<_>>()
    );
    // The client's "US" segment, and an ACK from the gateway's side that ends right after it.
    let tcp = |frame: &Frame| -> Option<(bool, u32, u32, usize)> {
        let b = &frame.bytes;
        if b.len() < 54 || b[23] != 6 {
            return None;
        }
        let ihl = usize::from(b[14] & 0x0f) * 4;
        let t = &b[14 + ihl..];
        let total = usize::from(u16::from_be_bytes([b[16], b[17]]));
        let payload = total - ihl - usize::from(t[12] >> 4) * 4;
        let from_client = b[26..30] == lab::CLIENT.octets() && t[2..4] == [0, 21];
        let from_gateway = b[26..30] == lab::PUBLIC.octets() && t[0..2] == [0, 21];
        (from_client || from_gateway).then(|| {
            (
                from_client,
                u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
                u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
                payload,
            )
        })
    };
    let segments: Vec<_> = frames.iter().filter_map(tcp).collect();
    let first_part = segments
        .iter()
        .find(|(from_client, _, _, len)| *from_client && *len == 2)
        .expect("the client's first part, alone in its segment");
    let end_of_part = first_part.1 + 2;
    assert!(
        segments
            .iter()
            .any(|(from_client, _, ack, len)| !from_client && *len == 0 && *ack == end_of_part),
        "no acknowledgement of the held part: {segments:?}"
    );
    assert!(
        output.status.success(),
        "{}{lines}\n{gateway_log}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = lines.lines().collect();
    assert!(
        lines[1].starts_with("230") || lines[1].starts_with("331"),
        "{lines:?}"
    );
    assert!(lines[2].starts_with("221"), "{lines:?}");
}

/// Native XDP punts control packets to the agent's tap too (through its devmap), with the
/// data connections forwarded by XDP: passive and active transfers of a published vsftpd
/// from wire-like end hosts (XDP cannot finish partial checksums) that take XDP redirects.
#[test]
fn native_xdp_punts_to_the_tap_too() {
    let config = format!("{}\n[dataplane]\nhook = \"xdp\"\n", published_config(true));
    let mut setup = Setup::with_options(
        &config,
        LabOptions {
            endpoint_tx_offload: false,
            router_tx_offload: true,
        },
    );
    let _receivers = setup
        .lab
        .accept_xdp_redirects()
        .expect("XDP_PASS on the end hosts");
    let server =
        FtpServer::start(ServerKind::Vsftpd, &setup.lab.inside, lab::SERVER).expect("vsftpd");
    let content = pattern(11, MIB);
    server.put("file", &content).expect("put file");
    let mut transfers = 0;
    for mode in [Mode::Pasv, Mode::Port] {
        let local = setup.scratch.join(format!("{mode:?}"));
        ftp::transfer(
            Client::Curl,
            mode,
            Direction::Download,
            &setup.lab.outside,
            lab::CLIENT,
            SocketAddrV4::new(lab::PUBLIC, 21),
            "file",
            &local,
        )
        .unwrap_or_else(|err| panic!("{mode:?} download: {err:#}"));
        assert_eq!(
            ftp::sha256_file(&local).expect("sha256"),
            ftp::sha256(&content),
            "{mode:?}"
        );
        transfers += 1;
    }
    let output = setup.stop();
    assert!(output.contains("hook=xdp"), "{output}");
    assert_clean_alg(&output, &setup.gateway, transfers);
}

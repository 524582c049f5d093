//! `cargo xtask demo`: a newcomer's first look. Builds the lab, shows that the public address
//! leads nowhere without the gateway, starts the gateway, moves real data through a published
//! server, and shows each packet's addresses as the client and as the server saw them; then
//! an FTP download in passive mode through a published vsftpd, with the 227 reply as the
//! server sent it and as the client received it.

use std::{net::SocketAddrV4, time::Duration};

use anyhow::{Context as _, bail};
use gateway_tests::{
    capture::{Capture, Frame},
    ftp::{self, Client, Direction, FtpServer, Mode, ServerKind},
    gateway::GatewayProcess,
    lab::{self, DEFAULT_PREFIX, HOST_IF, Lab, LabOptions},
    packet::{audit_checksums, payload, summarize},
    transfer::{hex, pattern, tcp_connects, tcp_transfer},
};

const PUBLIC_PORT: u16 = 80;
const PRIVATE_PORT: u16 = 8080;
const BYTES: usize = 4 << 20;

pub fn run() -> anyhow::Result<()> {
    crate::require_root("cargo xtask demo")?;
    crate::setup::run()?;
    let gateway_binary = crate::build_gateway(false)?;
    if Lab::exists(DEFAULT_PREFIX) {
        bail!(
            "the lab is already up; `cargo xtask lab down` first (the demo builds and removes its own)"
        );
    }
    // Ctrl-C: remove the lab (which kills the gateway inside it) before leaving.
    ctrlc::set_handler(|| {
        Lab::down(DEFAULT_PREFIX);
        eprintln!("\ninterrupted: lab removed");
        std::process::exit(130);
    })
    .context("cannot install the Ctrl-C handler")?;

    // The router's own offloads are off so its kernel writes out every checksum in full: the
    // captures at both ends can then check each one from scratch.
    let lab = Lab::up(
        DEFAULT_PREFIX,
        LabOptions {
            endpoint_tx_offload: true,
            router_tx_offload: false,
        },
    )?;
    let public = SocketAddrV4::new(lab::PUBLIC, PUBLIC_PORT);
    let private = SocketAddrV4::new(lab::SERVER, PRIVATE_PORT);
    let config_path = std::env::temp_dir().join("gateway-demo.toml");
    let mut config = lab::gateway_config("auto", &[(public, private, "tcp")]);
    config.push_str(&format!(
        "\n# An FTP server, through the ALG\n[[publish]]\npublic = \"{}:21\"\nprivate = \"{}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n",
        lab::PUBLIC,
        lab::SERVER
    ));
    std::fs::write(&config_path, &config).context("write the demo config")?;
    let result = demo(
        &lab,
        &gateway_binary,
        &config_path,
        &config,
        public,
        private,
    );
    let _ = std::fs::remove_file(&config_path);
    drop(lab);
    println!("\nlab removed.");
    result
}

fn demo(
    lab: &Lab,
    binary: &std::path::Path,
    config_path: &std::path::Path,
    config: &str,
    public: SocketAddrV4,
    private: SocketAddrV4,
) -> anyhow::Result<()> {
    println!(
        "\n== The lab ==\n\
         {inside:<16} server  10.0.0.2      (default route via the gateway)\n\
         {router:<16} gateway veth-in 10.0.0.1, veth-out 203.0.113.1\n\
         {outside:<16} client  203.0.113.2   (no route to 10.0.0.0/24)\n\
         A TCP server listens on {private} inside; we publish it at {public}.",
        inside = lab.inside.name(),
        router = lab.router.name(),
        outside = lab.outside.name(),
    );

    println!("\n== 1. Without the gateway ==");
    let reached = tcp_connects(&lab.outside, public, Duration::from_secs(2))?;
    println!(
        "client -> {public}: {}",
        if reached {
            "connected (unexpected!)"
        } else {
            "no connection: nothing listens there"
        }
    );
    if reached {
        bail!("the public address answered before the gateway ran");
    }

    println!(
        "\n== 2. Start the gateway in {} ==\n{config}",
        lab.router.name()
    );
    let mut gateway = GatewayProcess::start_binary(binary, &lab.router, config_path, &[])?;
    print_indented(&gateway.output());

    println!(
        "\n== 3. A {} MiB transfer each way through {public} ==",
        BYTES >> 20
    );
    let client_capture = Capture::start(&lab.outside, HOST_IF)?;
    let server_capture = Capture::start(&lab.inside, HOST_IF)?;
    let report = tcp_transfer(
        &lab.inside,
        private,
        &lab.outside,
        public,
        BYTES,
        Duration::from_secs(30),
    );
    let client_frames = client_capture.finish()?;
    let server_frames = server_capture.finish()?;
    let report =
        report.with_context(|| format!("transfer failed; gateway log:\n{}", gateway.output()))?;
    println!(
        "client: connected from {} to {}",
        report.client_local, report.client_connected_to
    );
    println!(
        "server: accepted {} on {}",
        report.server_saw_peer, report.server_local
    );
    println!(
        "upload   {} bytes, sha256 sent {} / received {}",
        report.upload_bytes,
        &hex(&report.upload_sent)[..16],
        &hex(&report.upload_received)[..16]
    );
    println!(
        "download {} bytes, sha256 sent {} / received {}",
        report.download_bytes,
        &hex(&report.download_sent)[..16],
        &hex(&report.download_received)[..16]
    );
    if !report.intact() {
        bail!("the data changed on the way");
    }

    println!("\nThe handshake as each end saw it (the gateway rewrote the middle):");
    println!("  {:<54} at the server (inside)", "at the client (outside)");
    let first = |frames: &[Frame]| -> Vec<String> {
        frames
            .iter()
            .filter_map(|frame| summarize(&frame.bytes))
            .take(4)
            .map(|s| s.to_string())
            .collect()
    };
    for (client, server) in first(&client_frames)
        .iter()
        .zip(first(&server_frames).iter())
    {
        println!("  {client:<54} {server}");
    }
    let (client_audit, server_audit) = (
        audit_checksums(client_frames.iter()),
        audit_checksums(server_frames.iter()),
    );
    println!(
        "checksums verified from scratch: {} frames received by the client, {} by the server, {} bad",
        client_audit.checked,
        server_audit.checked,
        client_audit.bad_count + server_audit.bad_count
    );

    ftp_demo(lab, &gateway)?;

    println!("\n== 5. Stop the gateway ==");
    let before = gateway.output().lines().count();
    let status = gateway.stop()?;
    print_indented(
        &gateway
            .output()
            .lines()
            .skip(before)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    if !status.success() {
        bail!("gateway exited with {status}");
    }
    let reached = tcp_connects(&lab.outside, public, Duration::from_secs(2))?;
    println!(
        "client -> {public} again: {}",
        if reached {
            "connected (unexpected!)"
        } else {
            "no connection, as before"
        }
    );
    Ok(())
}

/// The classic case: an outside client, passive mode, a published inside FTP server.
fn ftp_demo(lab: &Lab, gateway: &GatewayProcess) -> anyhow::Result<()> {
    let ftp_public = SocketAddrV4::new(lab::PUBLIC, 21);
    println!(
        "\n== 4. FTP: passive-mode download from vsftpd at {}:21, published at {ftp_public} ==",
        lab::SERVER
    );
    let server = FtpServer::start(ServerKind::Vsftpd, &lab.inside, lab::SERVER)?;
    let content = pattern(21, 1 << 20);
    server.put("hello.bin", &content)?;
    let local = std::env::temp_dir().join("gateway-demo-ftp.bin");
    let client_capture = Capture::start(&lab.outside, HOST_IF)?;
    let server_capture = Capture::start(&lab.inside, HOST_IF)?;
    let result = ftp::transfer(
        Client::Curl,
        Mode::Pasv,
        Direction::Download,
        &lab.outside,
        lab::CLIENT,
        ftp_public,
        "hello.bin",
        &local,
    );
    let client_frames = client_capture.finish()?;
    let server_frames = server_capture.finish()?;
    result.with_context(|| format!("FTP download failed; gateway log:\n{}", gateway.output()))?;
    let received = ftp::sha256_file(&local)?;
    let _ = std::fs::remove_file(&local);
    println!(
        "curl --disable-epsv ftp://{ftp_public}/hello.bin: {} bytes",
        content.len()
    );
    let reply_227 = |frames: &[Frame]| {
        frames.iter().find_map(|frame| {
            let text = String::from_utf8_lossy(payload(&frame.bytes)?).into_owned();
            text.lines()
                .find(|line| line.starts_with("227"))
                .map(str::to_owned)
        })
    };
    println!(
        "the server sent:     {}",
        reply_227(&server_frames).unwrap_or_else(|| "(no 227 captured)".into())
    );
    println!(
        "the client received: {}",
        reply_227(&client_frames).unwrap_or_else(|| "(no 227 captured)".into())
    );
    for line in gateway
        .output()
        .lines()
        .filter(|line| line.contains("ftp control session started"))
    {
        println!("  | {line}");
    }
    println!(
        "sha256 served {} / received {}",
        &hex(&ftp::sha256(&content))[..16],
        &hex(&received)[..16]
    );
    if received != ftp::sha256(&content) {
        bail!("the FTP download changed on the way");
    }
    Ok(())
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("  | {line}");
    }
}

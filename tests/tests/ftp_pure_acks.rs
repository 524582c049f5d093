//! The pure ACKs of FTP control connections forwarded by the fast path (issue 15): the same
//! passive sessions run through the ALG with `[ftp] forward_pure_acks` off and on, counted
//! from the gateway's own counters. On, the fast path forwards ACKs (`alg_ack_forwarded`) and
//! fewer packets reach the agent; every transfer is still whole and the hosts count no
//! checksum error (the forwarded ACKs carry moved sequence numbers).

use std::net::SocketAddrV4;

use gateway_tests::{
    TempFile, check_environment,
    ftp::{self, Client, Direction, FtpServer, Mode, ServerKind},
    gateway::GatewayProcess,
    lab::{self, Lab, LabOptions},
    netns::unique_prefix,
    transfer::pattern,
};

const SESSIONS: usize = 6;

/// Counters of one run of `SESSIONS` passive downloads (curl PASV and EPSV, lftp) through a
/// published pyftpdlib.
struct Run {
    punted: u64,
    forwarded: u64,
    sessions: u64,
}

fn run(lab: &Lab, prefix: &str, server: &FtpServer, forward: bool) -> Run {
    let config = TempFile::write(
        &format!("{prefix}-{forward}-gateway.toml"),
        &format!(
            "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n\n\
             [[publish]]\npublic = \"{}:21\"\nprivate = \"{}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n\n\
             [ftp]\nforward_pure_acks = {forward}\n",
            lab::PUBLIC,
            lab::SERVER
        ),
    );
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    let content = pattern(11, 64 * 1024);
    server.put("file", &content).expect("put");
    let cases = [
        (Client::Curl, Mode::Pasv),
        (Client::Curl, Mode::Epsv),
        (Client::Lftp, Mode::Pasv),
    ];
    for index in 0..SESSIONS {
        let (client, mode) = cases[index % cases.len()];
        let local = std::env::temp_dir().join(format!("{prefix}-{forward}-{index}"));
        ftp::transfer(
            client,
            mode,
            Direction::Download,
            &lab.outside,
            lab::CLIENT,
            SocketAddrV4::new(lab::PUBLIC, 21),
            "file",
            &local,
        )
        .unwrap_or_else(|err| panic!("{client:?} {mode:?}: {err:#}\n{}", gateway.output()));
        assert_eq!(
            ftp::sha256_file(&local).expect("download"),
            ftp::sha256(&content),
            "{client:?} {mode:?} with forward_pure_acks = {forward}"
        );
        let _ = std::fs::remove_file(&local);
    }
    // The hosts' own checksum verdicts (their captures see offloaded, partial checksums).
    for netns in [&lab.inside, &lab.outside] {
        assert!(
            netns.checksum_error_counters().iter().all(|(_, n)| *n == 0),
            "forward = {forward}: checksum errors in {}: {:?}",
            netns.name(),
            netns.checksum_error_counters()
        );
    }
    gateway.stop().expect("stop");
    gateway.assert_final_zero(&[
        "alg_violations",
        "alg_drop_stream_error",
        "alg_drop_no_session",
        "drop_punt_failed",
    ]);
    Run {
        punted: gateway.final_counter("punted"),
        forwarded: gateway.final_counter("alg_ack_forwarded"),
        sessions: gateway.final_counter("alg_sessions_opened"),
    }
}

#[test]
fn the_fast_path_forwards_pure_acks_and_the_agent_sees_fewer_packets() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, LabOptions::default()).expect("lab up");
    let server = FtpServer::start(ServerKind::Pyftpdlib, &lab.inside, lab::SERVER).expect("server");
    let off = run(&lab, &prefix, &server, false);
    let on = run(&lab, &prefix, &server, true);
    let per_session = |run: &Run, value: u64| value as f64 / run.sessions.max(1) as f64;
    println!(
        "punted per session: {:.1} with every packet punted, {:.1} with pure ACKs forwarded \
         ({:.1} forwarded per session)",
        per_session(&off, off.punted),
        per_session(&on, on.punted),
        per_session(&on, on.forwarded),
    );
    assert_eq!(off.sessions, SESSIONS as u64);
    assert_eq!(on.sessions, SESSIONS as u64);
    assert_eq!(off.forwarded, 0, "off: nothing forwarded");
    assert!(
        on.forwarded >= SESSIONS as u64,
        "on: at least one ACK per session forwarded, {} in all",
        on.forwarded
    );
    assert!(
        on.punted < off.punted,
        "on: fewer punts ({} against {})",
        on.punted,
        off.punted
    );
}

//! Pipelined commands and multi-line announcements through the ALG, in namespaces: a real
//! client that pipelines (lftp with `ftp:sync-mode off`), raw pipelined commands (a data
//! command right behind PASV, a PORT behind another command, a data command behind a PORT),
//! with every reply reaching the client in the order of its commands, under `pipelining` off
//! (the gateway holds and releases) and on (the server sees the pipeline, the gateway's own
//! refusals take their turn); and a server whose 227/229 are multi-line replies.

use std::{net::SocketAddrV4, path::PathBuf, time::Duration};

use gateway_tests::{
    TempFile,
    capture::Capture,
    check_environment,
    ftp::{self, Client, Direction, FtpServer, Mode, Script, ServerKind},
    gateway::GatewayProcess,
    lab::{self, HOST_IF, Lab, LabOptions},
    netns::unique_prefix,
    packet::audit_checksums,
    transfer::pattern,
};
use serde_json::Value;

fn published_config(pipelining: bool) -> String {
    format!(
        "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n\n\
         [[publish]]\npublic = \"{}:21\"\nprivate = \"{}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n\n\
         [ftp.policy]\npipelining = {pipelining}\n",
        lab::PUBLIC,
        lab::SERVER
    )
}

struct Setup {
    lab: Lab,
    gateway: GatewayProcess,
    _config: TempFile,
    scratch: PathBuf,
}

impl Setup {
    fn new(config: &str) -> Setup {
        check_environment().expect("environment");
        let prefix = unique_prefix();
        // Wire-like hosts: the captures show real checksums.
        let lab = Lab::up(
            &prefix,
            LabOptions {
                endpoint_tx_offload: false,
                router_tx_offload: false,
            },
        )
        .expect("lab up");
        let config = TempFile::write(&format!("{prefix}-gateway.toml"), config);
        let gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
        let scratch = std::env::temp_dir().join(format!("{prefix}-pipelining"));
        std::fs::create_dir_all(&scratch).expect("scratch");
        Setup {
            lab,
            gateway,
            _config: config,
            scratch,
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Whether any frame the client sent carries two or more whole command lines: proof that the
/// client pipelined.
fn client_pipelined(frames: &[gateway_tests::capture::Frame]) -> bool {
    frames.iter().filter(|frame| frame.outgoing).any(|frame| {
        let text = String::from_utf8_lossy(&frame.bytes);
        text.matches("\r\n").count() >= 2
            && [
                "RETR", "LIST", "PASV", "PORT", "TYPE", "SIZE", "MDTM", "CWD", "PWD", "EPSV",
            ]
            .iter()
            .filter(|verb| text.contains(*verb))
            .count()
                >= 2
    })
}

/// lftp with `ftp:sync-mode off` sends commands without waiting for replies. Its listings and
/// passive downloads go through untouched; in active mode it sends `PORT` behind other
/// commands, which the gateway refuses (a data address is only taken from a client that waited
/// for its last reply); lftp then sends the PORT again on its own and the download works.
#[test]
fn a_client_that_pipelines_gets_every_reply_in_order() {
    let mut setup = Setup::new(&published_config(false));
    let server =
        FtpServer::start(ServerKind::Vsftpd, &setup.lab.inside, lab::SERVER).expect("vsftpd");
    let content = pattern(3, 300 * 1024);
    server.put("file", &content).expect("put");
    let capture = Capture::start(&setup.lab.outside, HOST_IF).expect("capture");
    let mut debug = String::new();
    for (mode, passive) in [("pasv", "on"), ("port", "off")] {
        let local = setup.scratch.join(mode);
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
                    "set net:max-retries 1; set net:timeout 10; set ftp:ssl-allow no; \
                     set ftp:sync-mode off; set ftp:passive-mode {passive}; set ftp:prefer-epsv no; \
                     set ftp:port-ipv4 {}; cls -l; get file -o {}; bye",
                    lab::CLIENT,
                    local.display()
                ),
                &format!("ftp://anonymous:x@{}", lab::PUBLIC),
            ])
            .output()
            .expect("lftp");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "lftp {mode}: {stderr}\ngateway:\n{}",
            setup.gateway.output()
        );
        assert_eq!(
            ftp::sha256_file(&local).expect("sha256"),
            ftp::sha256(&content),
            "{mode}"
        );
        if mode == "pasv" {
            assert_eq!(
                setup.gateway.counter_now("alg_violations").expect("stats"),
                0,
                "passive: nothing refused\n{stderr}"
            );
        }
        debug.push_str(&stderr);
    }
    let frames = capture.finish().expect("capture");
    assert!(
        client_pipelined(&frames),
        "lftp did not pipeline: this test proves nothing\n{debug}"
    );
    let audit = audit_checksums(frames.iter());
    assert!(audit.bad.is_empty(), "{:?}", audit.bad);
    setup.gateway.stop().expect("stop");
    let output = setup.gateway.output();
    for counter in ["alg_not_ftp", "alg_drop_stream_error"] {
        assert_eq!(
            setup.gateway.final_counter(counter),
            0,
            "{counter}\n{output}"
        );
    }
    // Whatever was refused was a pipelined PORT, and said so.
    let refused: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("ftp policy violation"))
        .collect();
    assert!(
        refused
            .iter()
            .all(|line| line.contains("line=PORT") && line.contains("pipelined")),
        "{refused:#?}\n{debug}"
    );
}

fn raw_pipelines(pipelining: bool) {
    let mut setup = Setup::new(&published_config(pipelining));
    let _server =
        FtpServer::start(ServerKind::Vsftpd, &setup.lab.inside, lab::SERVER).expect("vsftpd");
    let capture = Capture::start(&setup.lab.outside, HOST_IF).expect("capture");
    let result = Script::spawn(
        &setup.lab.outside,
        "pipeline_client.py",
        &[&lab::PUBLIC.to_string(), "21", &lab::CLIENT.to_string()],
    )
    .expect("client")
    .finish(Duration::from_secs(60))
    .unwrap_or_else(|err| panic!("{err:#}\ngateway:\n{}", setup.gateway.output()));
    let result: Value = serde_json::from_str(&result).expect("json");
    let codes = |step: &str| -> Vec<String> {
        result[step]
            .as_array()
            .unwrap_or_else(|| panic!("{step}: {result}"))
            .iter()
            .map(|line| line.as_str().unwrap_or_default().chars().take(3).collect())
            .collect()
    };
    let case = format!("pipelining = {pipelining}: {result}");
    // USER and PASS in one segment: vsftpd logs anonymous in on USER alone, so PASS is out of
    // state; its refusal comes after USER's 230, not before.
    assert_eq!(codes("login"), ["230", "503"], "{case}");
    // PASV then LIST in one segment: the 227 (rewritten to the public address), then LIST's
    // own replies.
    assert_eq!(codes("pasv_list"), ["227", "150", "226"], "{case}");
    assert!(
        result["pasv_list"][0]
            .as_str()
            .is_some_and(|line| line.contains("203,0,113,1")),
        "{case}"
    );
    assert!(result["pasv_listing_bytes"].as_u64() > Some(0), "{case}");
    // TYPE then PORT in one segment: TYPE's reply, then the gateway's refusal of the PORT,
    // in that order.
    assert_eq!(codes("type_port"), ["200", "503"], "{case}");
    // PORT on its own, LIST behind it: the PORT's 200, then LIST's replies, and the listing
    // arrives on the announced port.
    assert_eq!(codes("port_list"), ["200", "150", "226"], "{case}");
    assert!(result["port_listing"]["bytes"].as_u64() > Some(0), "{case}");
    assert!(
        result["quit"]
            .as_str()
            .is_some_and(|line| line.starts_with("221")),
        "{case}"
    );
    let frames = capture.finish().expect("capture");
    let audit = audit_checksums(frames.iter());
    assert!(
        audit.checked > 10 && audit.bad.is_empty(),
        "{:?}",
        audit.bad
    );
    setup.gateway.stop().expect("stop");
    let output = setup.gateway.output();
    assert_eq!(
        setup.gateway.final_counter("alg_violation_out_of_state"),
        2,
        "PASS after the login, and the PORT in the same flight as TYPE\n{output}"
    );
    assert_eq!(setup.gateway.final_counter("alg_not_ftp"), 0, "{output}");
}

#[test]
fn raw_pipelined_commands_are_held_and_answered_in_order() {
    raw_pipelines(false);
}

#[test]
fn raw_pipelined_commands_pass_with_pipelining_on_and_refusals_keep_their_turn() {
    raw_pipelines(true);
}

#[test]
fn multi_line_227_and_229_are_rewritten_in_their_first_line() {
    let mut setup = Setup::new(&published_config(false));
    let content = pattern(4, 128 * 1024);
    let file = setup.scratch.join("served");
    std::fs::write(&file, &content).expect("write");
    let log = setup.scratch.join("commands.log");
    let _server = Script::spawn(
        &setup.lab.inside,
        "split_server.py",
        &[
            &lab::SERVER.to_string(),
            file.to_str().expect("path"),
            log.to_str().expect("path"),
            "multiline",
        ],
    )
    .expect("server");
    ftp::wait_listening(&setup.lab.inside, 21, Duration::from_secs(10)).expect("listening");
    // curl and lftp read a 227's address from the reply's last line only, so they cannot use
    // such a server at all; Python's ftplib reads the whole reply.
    for (client, mode) in [(Client::Ftplib, Mode::Pasv), (Client::Ftplib, Mode::Epsv)] {
        let local = setup.scratch.join(format!("{client:?}-{mode:?}"));
        ftp::transfer(
            client,
            mode,
            Direction::Download,
            &setup.lab.outside,
            lab::CLIENT,
            SocketAddrV4::new(lab::PUBLIC, 21),
            "file",
            &local,
        )
        .unwrap_or_else(|err| {
            panic!(
                "{client:?} {mode:?}: {err:#}\ngateway:\n{}",
                setup.gateway.output()
            )
        });
        assert_eq!(
            ftp::sha256_file(&local).expect("sha256"),
            ftp::sha256(&content),
            "{client:?} {mode:?}"
        );
    }
    setup.gateway.stop().expect("stop");
    let output = setup.gateway.output();
    assert_eq!(setup.gateway.final_counter("alg_violations"), 0, "{output}");
    assert!(
        setup.gateway.final_counter("expectation_used") >= 2,
        "{output}"
    );
}

//! A held half line sends a control connection's pure ACKs back to the agent, and finishing
//! the line gives them back to the fast path (issue 15): a client logs in through the ALG,
//! reads a slow multi-line reply (its ACKs forwarded by the fast path: `alg_ack_forwarded`
//! grows), then reads the same reply with half of its next command sent and unfinished (the
//! agent holds those bytes, so every ACK comes to it: `punted` grows by them and
//! `alg_ack_forwarded` not at all), then finishes the line and reads the reply again (its ACKs
//! forwarded again). The server gets the command whole, once; the hosts count no checksum
//! error, and with wire-like hosts a capture on each checks every frame's checksums.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    time::Duration,
};

use gateway_tests::{
    TempFile,
    capture::Capture,
    check_environment,
    ftp::{self, Script},
    gateway::GatewayProcess,
    lab::{self, HOST_IF, Lab, LabOptions},
    packet::audit_checksums,
};

/// Segments of `slow_reply_server.py`'s HELP reply: its first line, 8 more, its last.
const REPLY_SEGMENTS: u64 = 10;

#[derive(Clone, Copy, Debug)]
enum Hook {
    Tc,
    Xdp,
}

/// `half_line_client.py`, driven step by step over its stdin and stdout; killed when dropped.
struct SteppedClient {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl SteppedClient {
    fn start(lab: &Lab) -> SteppedClient {
        let mut child = lab
            .outside
            .command("python3")
            .arg(ftp::script("half_line_client.py"))
            .arg(lab::PUBLIC.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start half_line_client.py");
        let input = child.stdin.take().expect("client stdin");
        let output = BufReader::new(child.stdout.take().expect("client stdout"));
        let mut client = SteppedClient {
            child,
            input,
            output,
        };
        client.wait_done("login");
        client
    }

    /// Starts `step`; [`SteppedClient::wait_line`] follows it.
    fn start_step(&mut self, step: &str) {
        writeln!(self.input, "{step}").expect("write the client's step");
        self.input.flush().expect("flush");
    }

    fn wait_done(&mut self, step: &str) {
        self.wait_line(&format!("done {step}"));
    }

    /// Waits for the client to print `expected` (the end of a step, or a point inside one).
    fn wait_line(&mut self, expected: &str) {
        let mut line = String::new();
        self.output
            .read_line(&mut line)
            .expect("read the client's output");
        assert_eq!(
            line.trim(),
            expected,
            "the client failed before {expected:?} (its error is above)"
        );
    }

    /// Waits for it to send QUIT (after its last step) and end; whether it ended well.
    fn finish(mut self) -> bool {
        for _ in 0..250 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for SteppedClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The counters a step moved: (punted, alg_ack_forwarded).
fn counters(gateway: &GatewayProcess) -> (u64, u64) {
    (
        gateway.counter_now("punted").expect("punted"),
        gateway
            .counter_now("alg_ack_forwarded")
            .expect("alg_ack_forwarded"),
    )
}

fn held_line(hook: Hook) {
    check_environment().expect("environment");
    let prefix = gateway_tests::netns::unique_prefix();
    // XDP needs wire-like end hosts (it cannot finish partial checksums), which also lets the
    // captures check every checksum; the router's kernel finishes what the gateway leaves.
    let wire_like = matches!(hook, Hook::Xdp);
    let lab = Lab::up(
        &prefix,
        LabOptions {
            endpoint_tx_offload: !wire_like,
            router_tx_offload: !wire_like,
        },
    )
    .expect("lab up");
    let _receivers = wire_like.then(|| {
        lab.accept_xdp_redirects()
            .expect("XDP_PASS on the end hosts")
    });
    let hook_name = match hook {
        Hook::Tc => "tc",
        Hook::Xdp => "xdp",
    };
    let config = TempFile::write(
        &format!("{prefix}-gateway.toml"),
        &format!(
            "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n\n\
             [[publish]]\npublic = \"{}:21\"\nprivate = \"{}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n\n\
             [dataplane]\nhook = \"{hook_name}\"\n",
            lab::PUBLIC,
            lab::SERVER
        ),
    );
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    let server_log = TempFile::write(&format!("{prefix}-server.log"), "");
    let _server = Script::spawn(
        &lab.inside,
        "slow_reply_server.py",
        &[
            &lab::SERVER.to_string(),
            server_log.0.to_str().expect("path"),
        ],
    )
    .expect("server");
    ftp::wait_listening(&lab.inside, 21, Duration::from_secs(5)).expect("server listening");
    let captures = wire_like.then(|| {
        [&lab.outside, &lab.inside].map(|netns| Capture::start(netns, HOST_IF).expect("capture"))
    });

    let mut client = SteppedClient::start(&lab);
    let mut moved = Vec::new();
    for step in ["plain", "held", "after"] {
        let mut before = counters(&gateway);
        client.start_step(step);
        if step == "held" {
            // Counted from the moment the half line is out.
            client.wait_line("holding");
            before = counters(&gateway);
        }
        client.wait_done(step);
        let after = counters(&gateway);
        moved.push((after.0 - before.0, after.1 - before.1));
    }
    assert!(client.finish(), "the client's QUIT");
    let [plain, held, after] = [moved[0], moved[1], moved[2]];
    println!(
        "{hook:?}: (punted, ACKs forwarded) per step: plain {plain:?}, held {held:?}, after {after:?}"
    );

    // The client acknowledges each segment of the reply while it waits for the next.
    assert!(
        plain.1 >= 5,
        "{hook:?}: the fast path forwards the client's ACKs of a reply: {plain:?}\n{}",
        gateway.output()
    );
    assert_eq!(
        held.1,
        0,
        "{hook:?}: no ACK forwarded while half a line is held: {held:?}\n{}",
        gateway.output()
    );
    assert!(
        held.0 >= REPLY_SEGMENTS - 1 + 5,
        "{hook:?}: the reply's segments after its first, and the client's ACKs of them, reach \
         the agent: {held:?}"
    );
    assert!(
        after.1 >= 5,
        "{hook:?}: forwarding resumes once the line is complete: {after:?}\n{}",
        gateway.output()
    );

    let log = std::fs::read_to_string(&server_log.0).expect("server log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines,
        [
            "USER anonymous",
            "PASS gateway@",
            "HELP",
            "HELP",
            "NOOP",
            "HELP",
            "QUIT"
        ],
        "{hook:?}: what reached the server"
    );
    for netns in [&lab.inside, &lab.outside] {
        assert!(
            netns.checksum_error_counters().iter().all(|(_, n)| *n == 0),
            "{hook:?}: checksum errors in {}: {:?}",
            netns.name(),
            netns.checksum_error_counters()
        );
    }
    if let Some(captures) = captures {
        for capture in captures {
            let frames = capture.finish().expect("capture");
            let audit = audit_checksums(frames.iter());
            assert!(audit.checked > 20, "{hook:?}: {} frames", audit.checked);
            assert!(audit.bad.is_empty(), "{hook:?}: {:?}", audit.bad);
        }
    }
    gateway.stop().expect("stop");
    gateway.assert_final_zero(&[
        "alg_violations",
        "alg_drop_stream_error",
        "alg_drop_no_session",
        "drop_punt_failed",
    ]);
}

#[test]
fn a_held_half_line_sends_the_acks_to_the_agent_until_it_is_complete_tc() {
    held_line(Hook::Tc);
}

#[test]
fn a_held_half_line_sends_the_acks_to_the_agent_until_it_is_complete_xdp() {
    held_line(Hook::Xdp);
}

//! What the agent costs on the control connection's handshake (issue 15, item 2: the SYN and
//! SYN-ACK still go to the agent; whether BPF should forward them is to be decided by
//! measurement): the connect time the client sees, beside Linux and plain forwarding, and
//! the agent's CPU those two punts account for.

use std::fmt::Write as _;

use super::{FtpSamples, FtpSetup, median};

/// The handshake's segments the agent takes: the SYN and the SYN-ACK (the last ACK the fast
/// path may already forward).
const HANDSHAKE_PUNTS: f64 = 2.0;

pub(super) fn report(samples: &[FtpSamples]) -> anyhow::Result<String> {
    let mut out = String::new();
    if samples.iter().any(|sample| sample.connect.is_empty()) {
        return Ok(out);
    }
    let of = |setup: FtpSetup| {
        FtpSetup::ALL
            .iter()
            .position(|s| *s == setup)
            .and_then(|at| samples.get(at))
    };
    let (Some(plain), Some(linux), Some(gateway)) = (
        of(FtpSetup::Plain),
        of(FtpSetup::NftablesHelper),
        of(FtpSetup::Gateway),
    ) else {
        anyhow::bail!("an FTP setup is missing");
    };
    let connect = |sample: &FtpSamples| {
        let p50: Vec<f64> = sample.connect.iter().map(|pair| pair.0).collect();
        let p99: Vec<f64> = sample.connect.iter().map(|pair| pair.1).collect();
        (median(&p50), median(&p99))
    };
    let (plain_connect, linux_connect, gateway_connect) =
        (connect(plain), connect(linux), connect(gateway));
    writeln!(
        out,
        "\nThe handshake: a control connection's connect (SYN sent to SYN-ACK received, timed by the client one session\nat a time; median of the runs' p50 / p99): plain forwarding {:.0} / {:.0} us, Linux {:.0} / {:.0} us, the gateway\n{:.0} / {:.0} us. The gateway's SYN and SYN-ACK each go through the agent (punt, wake-up, raw send): {:.0} us (p50)\nmore than Linux on every control connection's set-up.",
        plain_connect.0,
        plain_connect.1,
        linux_connect.0,
        linux_connect.1,
        gateway_connect.0,
        gateway_connect.1,
        gateway_connect.0 - linux_connect.0,
    )?;
    let punted: Vec<f64> = gateway
        .agent
        .iter()
        .map(|agent| agent.punted_per_session)
        .collect();
    let agent_cpu: Vec<f64> = gateway.cpu.iter().map(|cpu| cpu.agent).collect();
    if !punted.is_empty() && median(&punted) > 0.0 && !agent_cpu.is_empty() {
        let share = HANDSHAKE_PUNTS / median(&punted);
        writeln!(
            out,
            "Those two segments are {:.0}% of the {:.1} punted packets of a session: at the agent's CPU per punted packet\nabove, about {:.2} s of its {:.2} s per 1,000 sessions, the most that forwarding the handshake in BPF could save.",
            share * 100.0,
            median(&punted),
            share * median(&agent_cpu),
            median(&agent_cpu),
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::ftp::{AgentTimes, cpu::CpuPerSessions};

    fn sample(connect: &[(f64, f64)]) -> FtpSamples {
        FtpSamples {
            connect: connect.to_vec(),
            ..FtpSamples::default()
        }
    }

    #[test]
    fn the_handshake_cost_is_the_connect_time_over_linux_and_its_share_of_the_punts() {
        let mut gateway = sample(&[(150.0, 300.0), (160.0, 320.0), (170.0, 340.0)]);
        gateway.agent = vec![
            AgentTimes {
                wait_ns: 0.0,
                busy_ns: 0.0,
                punted_per_session: 16.0,
                acks_forwarded_per_session: 4.0,
                wakeups_per_session: 0.0,
                polled_per_session: 0.0,
                send_calls_per_session: 0.0,
                sent_per_session: 0.0,
            };
            3
        ];
        gateway.cpu = vec![CpuPerSessions::with_agent(0.8); 3];
        let samples = [
            sample(&[(40.0, 80.0); 3]),
            sample(&[(60.0, 90.0), (60.0, 95.0), (70.0, 99.0)]),
            gateway,
        ];
        let report = report(&samples).expect("report");
        assert!(
            report.contains("Linux 60 / 95 us, the gateway\n160 / 320 us"),
            "{report}"
        );
        assert!(report.contains("100 us (p50)\nmore than Linux"), "{report}");
        assert!(
            report.contains("12% of the 16.0 punted packets of a session"),
            "{report}"
        );
        assert!(report.contains("about 0.10 s of its 0.80 s"), "{report}");
    }
}

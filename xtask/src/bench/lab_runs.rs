//! The lab part of the bench: every configuration (plain forwarding, nftables, the gateway on
//! each hook and forwarding) on a lab of its own, alternating run by run: one iperf3 TCP
//! stream, then small UDP packets at full rate with the router CPU they cost.

use std::net::SocketAddrV4;

use anyhow::{Context as _, bail};
use gateway_tests::{
    lab::{self, Lab, LabOptions},
    netns::unique_prefix,
};

use super::{IperfServer, Options, PORT, Samples, Setup, cpu, iperf, start_gateway};

/// Every lab configuration, `options.runs` times, alternating.
pub(super) fn lab_samples(
    gateway: &std::path::Path,
    options: &Options,
) -> anyhow::Result<Vec<Samples>> {
    let mut samples = vec![Samples::default(); Setup::ALL.len()];
    for run in 0..options.runs {
        for (index, setup) in Setup::ALL.into_iter().enumerate() {
            println!("bench: run {}/{}: {}", run + 1, options.runs, setup.name());
            let measured = measure(setup, gateway, options.seconds)
                .with_context(|| format!("measuring {}", setup.name()))?;
            println!(
                "bench:   tcp {:.2} Gbit/s, udp {:.0} packets/s, {:.0} ns softirq per packet",
                measured.gbps, measured.pps, measured.softirq_ns
            );
            samples[index].tcp_gbps.push(measured.gbps);
            samples[index].udp_pps.push(measured.pps);
            samples[index].softirq_ns.push(measured.softirq_ns);
        }
    }
    Ok(samples)
}

/// What one lab configuration measured.
struct Measured {
    gbps: f64,
    /// UDP packets received per second.
    pps: f64,
    /// The machine's softirq time during the UDP run per packet sent, ns.
    softirq_ns: f64,
}

/// One configuration, on a lab of its own.
fn measure(
    setup: Setup,
    gateway_binary: &std::path::Path,
    seconds: u32,
) -> anyhow::Result<Measured> {
    // Native XDP cannot handle the partial checksums of locally generated veth packets, so
    // its run uses wire-like end hosts (checksums computed in software, no TSO).
    let options = LabOptions {
        endpoint_tx_offload: !setup.wire_like(),
        router_tx_offload: true,
    };
    let prefix = format!("{}b", unique_prefix());
    let lab = Lab::up(&prefix, options)?;
    let _xdp_receivers = if setup.wire_like() {
        lab.accept_xdp_redirects()?
    } else {
        Vec::new()
    };
    let public = SocketAddrV4::new(lab::PUBLIC, PORT);
    let private = SocketAddrV4::new(lab::SERVER, PORT);
    let mut _gateway = None;
    let mut _config = None;
    let target = match setup {
        Setup::Plain | Setup::PlainWireLike => {
            lab.outside
                .sh(&format!("ip route add 10.0.0.0/24 via {}", lab::PUBLIC))?;
            private
        }
        Setup::Nftables | Setup::NftablesWireLike => {
            lab.router.sh(&format!(
                "nft -f - <<'EOF'
table ip bench_nat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat;
        ip daddr {public_ip} tcp dport {PORT} dnat to {private}
        ip daddr {public_ip} udp dport {PORT} dnat to {private}
    }}
}}
EOF",
                public_ip = lab::PUBLIC,
            ))?;
            public
        }
        Setup::GatewayTc | Setup::GatewayXdp | Setup::GatewayTcKernel | Setup::GatewayXdpKernel => {
            let hook = if matches!(setup, Setup::GatewayTc | Setup::GatewayTcKernel) {
                "tc"
            } else {
                "xdp"
            };
            let mut text =
                lab::gateway_config(hook, &[(public, private, "tcp"), (public, private, "udp")]);
            if matches!(setup, Setup::GatewayTcKernel | Setup::GatewayXdpKernel) {
                text = text.replacen(
                    &format!("hook = \"{hook}\"\n"),
                    &format!("hook = \"{hook}\"\nforwarding = \"kernel\"\n"),
                    1,
                );
            }
            let (gateway, config) = start_gateway(gateway_binary, &lab, &prefix, &text)?;
            _gateway = Some(gateway);
            _config = Some(config);
            public
        }
    };
    let mut server = IperfServer::start(&lab)?;
    let tcp = iperf(&lab, target, seconds, &[])?;
    let gbps = tcp["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 tcp: no bits_per_second")?
        / 1e9;
    // The sender pinned to the last CPU: the kernel forwards each packet (router and receiving
    // host, in softirq) on the CPU that sent it, so that CPU's softirq time is the traffic's,
    // and the other CPU's share of this shared machine's other work stays out of it.
    let traffic_cpu =
        std::thread::available_parallelism().map_or(0, |cpus| cpus.get().saturating_sub(1));
    let meter = cpu::CpuMeter::start(None, Some(traffic_cpu))?;
    let udp = iperf(
        &lab,
        target,
        seconds,
        &["-u", "-b", "0", "-l", "64", "-A", &traffic_cpu.to_string()],
    )?;
    let used = meter.stop()?;
    let sum = &udp["end"]["sum"];
    let packets = sum["packets"].as_f64().context("iperf3 udp: no packets")?;
    if packets <= 0.0 {
        bail!("iperf3 udp: no packets sent");
    }
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let elapsed = sum["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .unwrap_or(seconds as f64);
    server.stop();
    // Every packet sent crossed the router (what the receiving socket then lost too).
    Ok(Measured {
        gbps,
        pps: (packets - lost) / elapsed,
        softirq_ns: used.softirq * 1e9 / packets,
    })
}

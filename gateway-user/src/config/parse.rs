//! Validation of the sections that have more to check than their types say.

use std::net::SocketAddrV4;

use gateway_ftp::policy::Policy;

use super::{
    Ftp, Ipv4Net, Masquerade,
    policy::apply_policy,
    raw::{
        RawFtp, RawMasquerade, default_busy_poll_us, default_expectation_timeout,
        default_forward_pure_acks, default_state_file,
    },
};

/// One `masquerade.networks` entry. A prefix with host bits set is refused rather than
/// truncated as `ipnet` would: it most likely names a host where a network was meant.
pub(super) fn parse_network(text: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = text.parse().map_err(|_| {
        "expected an IPv4 prefix, address/length with a length of 0 to 32, such as \"10.0.0.0/24\""
            .to_owned()
    })?;
    if net.addr() != net.network() {
        return Err(format!(
            "{text} has host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}

pub(super) fn parse_masquerade(raw: &RawMasquerade) -> Result<Masquerade, String> {
    use gateway_common::{MAX_MASQ_ADDRESSES, MAX_MASQ_NETWORKS};
    if raw.networks.is_empty() || raw.networks.len() > MAX_MASQ_NETWORKS {
        return Err(format!(
            "masquerade.networks needs 1 to {MAX_MASQ_NETWORKS} prefixes"
        ));
    }
    if raw.addresses.is_empty() || raw.addresses.len() > MAX_MASQ_ADDRESSES {
        return Err(format!(
            "masquerade.addresses needs 1 to {MAX_MASQ_ADDRESSES} addresses"
        ));
    }
    let networks = raw
        .networks
        .iter()
        .map(|text| {
            parse_network(text).map_err(|why| format!("masquerade.networks: {text:?}: {why}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let addresses = raw
        .addresses
        .iter()
        .map(|text| {
            text.parse::<std::net::Ipv4Addr>()
                .map_err(|_| format!("masquerade.addresses: {text:?} is not an IPv4 address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (low, high) = raw
        .ports
        .split_once('-')
        .and_then(|(low, high)| {
            Some((
                low.trim().parse::<u16>().ok()?,
                high.trim().parse::<u16>().ok()?,
            ))
        })
        .filter(|(low, high)| *low >= 1 && low <= high)
        .ok_or(format!(
            "masquerade.ports = {:?}: expected a range such as \"1024-65535\"",
            raw.ports
        ))?;
    Ok(Masquerade {
        networks,
        addresses,
        ports: low..=high,
        filtering: raw.filtering,
    })
}

/// The longest busy-poll window: past a millisecond, sleeping in epoll costs less than
/// spinning, and the agent's other work waits that long.
const MAX_BUSY_POLL_US: i64 = 1000;
/// One second: a longer wake-up latency constrains no idle state a CPU has.
const MAX_CPU_WAKEUP_LATENCY_US: i64 = 1_000_000;

pub(super) fn parse_ftp(raw: Option<&RawFtp>, masquerade: bool) -> Result<Ftp, String> {
    let default_ports = if masquerade { vec![21] } else { Vec::new() };
    let Some(raw) = raw else {
        return Ok(Ftp {
            control_ports: default_ports,
            expectation_timeout: default_expectation_timeout(),
            policy: Policy::default(),
            state_file: default_state_file(),
            realtime_priority: None,
            forward_pure_acks: default_forward_pure_acks(),
            busy_poll_us: default_busy_poll_us() as u64,
            cpu_wakeup_latency_us: None,
        });
    };
    let policy = match &raw.policy {
        Some(policy) => apply_policy(&Policy::default(), policy, "ftp.policy")?,
        None => Policy::default(),
    };
    let control_ports = match &raw.control_ports {
        None => default_ports,
        Some(ports) => {
            if !ports.is_empty() && !masquerade {
                return Err(
                    "ftp.control_ports serves masqueraded clients, but there is no [masquerade]"
                        .into(),
                );
            }
            if ports.len() > gateway_common::MAX_FTP_CONTROL_PORTS {
                return Err(format!(
                    "ftp.control_ports names {} ports; at most {}",
                    ports.len(),
                    gateway_common::MAX_FTP_CONTROL_PORTS
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for port in ports {
                if *port == 0 {
                    return Err("ftp.control_ports: port 0 is not a port".into());
                }
                if !seen.insert(*port) {
                    return Err(format!("ftp.control_ports names {port} twice"));
                }
            }
            ports.clone()
        }
    };
    if !(1..=3600).contains(&raw.expectation_timeout) {
        return Err(format!(
            "ftp.expectation_timeout = {}: expected 1 to 3600 seconds",
            raw.expectation_timeout
        ));
    }
    let state_file = raw.state_file.clone().unwrap_or_else(default_state_file);
    if !state_file.is_absolute() {
        return Err(format!(
            "ftp.state_file = {state_file:?}: expected an absolute path"
        ));
    }
    let realtime_priority = match raw.realtime_priority {
        None => None,
        Some(priority @ 1..=99) => Some(priority as u8),
        Some(other) => {
            return Err(format!(
                "ftp.realtime_priority = {other}: expected a SCHED_FIFO priority from 1 to 99"
            ));
        }
    };
    let busy_poll_us = match raw.busy_poll_us {
        us @ 0..=MAX_BUSY_POLL_US => us as u64,
        other => {
            return Err(format!(
                "ftp.busy_poll_us = {other}: expected 0 (off) to {MAX_BUSY_POLL_US} microseconds"
            ));
        }
    };
    let cpu_wakeup_latency_us = match raw.cpu_wakeup_latency_us {
        None => None,
        Some(us @ 0..=MAX_CPU_WAKEUP_LATENCY_US) => Some(us as u32),
        Some(other) => {
            return Err(format!(
                "ftp.cpu_wakeup_latency_us = {other}: expected 0 to {MAX_CPU_WAKEUP_LATENCY_US} microseconds (or no key: the host's idle states as they are)"
            ));
        }
    };
    Ok(Ftp {
        control_ports,
        expectation_timeout: raw.expectation_timeout,
        policy,
        state_file,
        realtime_priority,
        forward_pure_acks: raw.forward_pure_acks,
        busy_poll_us,
        cpu_wakeup_latency_us,
    })
}

pub(super) fn parse_endpoint(text: &str) -> Result<SocketAddrV4, &'static str> {
    let socket: SocketAddrV4 = text
        .parse()
        .map_err(|_| "not an IPv4 address and port such as \"203.0.113.1:21\"")?;
    if socket.port() == 0 {
        return Err("port 0 cannot be published");
    }
    let ip = socket.ip();
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err("not a unicast address");
    }
    Ok(socket)
}

pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |newline| before.len() - newline - 1)
        + 1;
    (line, column)
}

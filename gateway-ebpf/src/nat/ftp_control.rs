//! Which packets belong to FTP control connections, for the agent (punted, `punt.rs`): those
//! of published FTP control endpoints (`PUNT_ENDPOINTS`), and those of masqueraded clients'
//! connections to `[ftp] control_ports`.

use gateway_common::{Endpoint, IPPROTO_TCP, MAX_FTP_CONTROL_PORTS, NatConfig};

use crate::maps::PUNT_ENDPOINTS;

/// Whether `endpoint` is a published FTP control endpoint (`alg = "ftp"`), and if so why its
/// packets are punted.
#[inline(always)]
pub(super) fn punt_reason(endpoint: Endpoint) -> Option<u8> {
    if endpoint.proto != IPPROTO_TCP {
        return None;
    }
    // SAFETY: map values are plain data and only read here.
    unsafe { PUNT_ENDPOINTS.get(endpoint) }.copied()
}

/// Whether `port` is one of `[ftp] control_ports` (outside servers of masqueraded clients).
#[inline(always)]
pub(super) fn is_ftp_control_port(config: &NatConfig, proto: u8, port: [u8; 2]) -> bool {
    if proto != IPPROTO_TCP {
        return false;
    }
    for index in 0..MAX_FTP_CONTROL_PORTS {
        if index as u32 >= config.ftp_control_port_count {
            break;
        }
        if config.ftp_control_ports[index] == port {
            return true;
        }
    }
    false
}

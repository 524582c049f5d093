//! Which packets belong to FTP control connections, for the agent (punted, `punt.rs`): those
//! of published FTP control endpoints (`PUNT_ENDPOINTS`), and those of masqueraded clients'
//! connections to `[ftp] control_ports`.

use gateway_common::{
    Endpoint, IPPROTO_TCP, MAX_FTP_CONTROL_PORTS, NatConfig, PuntReason, outcome::Dropped,
};

use super::Outcome;

use crate::maps::PUNT_ENDPOINTS;

/// Whether `endpoint` is a published FTP control endpoint (`alg = "ftp"`), and if so the
/// punt, with why its packets go to the agent. A reason the map holds that names no
/// [`PuntReason`] cannot be punted faithfully: the packet is dropped (fail closed), never
/// translated past the ALG.
#[inline(always)]
pub(super) fn punt_endpoint(endpoint: Endpoint) -> Option<Outcome> {
    if endpoint.proto != IPPROTO_TCP {
        return None;
    }
    // SAFETY: map values are plain data and only read here.
    let reason = *unsafe { PUNT_ENDPOINTS.get(endpoint) }?;
    Some(match PuntReason::try_from(reason) {
        Ok(reason) => Outcome::Punt(reason),
        Err(_) => Outcome::Drop(Dropped::PuntFailed),
    })
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

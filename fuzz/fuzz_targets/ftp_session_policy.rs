//! A control session as production builds it, with a policy, fed arbitrary segments in both
//! directions and the resend timer: every check and action, the not-FTP rule, held and
//! released pipelined lines, the gateway's own replies and RSTs. Nothing may panic. The first
//! byte picks the policy (action, pipelining, not-FTP reset or pass) and the side behind the
//! gateway (published server or masqueraded client).
#![no_main]

use std::{net::Ipv4Addr, sync::Arc};

use gateway_ftp::{
    policy::{NotFtpAction, Policy, ViolationAction},
    session::{Endpoints, Session},
};
use libfuzzer_sys::fuzz_target;

mod segments;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, data)) = data.split_first() else {
        return;
    };
    let endpoints = if choice & 0x40 == 0 {
        Endpoints {
            client_real: Ipv4Addr::new(203, 0, 113, 2),
            client_seen: Ipv4Addr::new(203, 0, 113, 2),
            server_real: Ipv4Addr::new(10, 0, 0, 2),
            server_seen: Ipv4Addr::new(203, 0, 113, 1),
        }
    } else {
        Endpoints {
            client_real: Ipv4Addr::new(10, 0, 0, 2),
            client_seen: Ipv4Addr::new(203, 0, 113, 1),
            server_real: Ipv4Addr::new(198, 51, 100, 7),
            server_seen: Ipv4Addr::new(198, 51, 100, 7),
        }
    };
    let policy = Policy {
        max_line: 256,
        on_violation: match choice & 0x03 {
            0 => ViolationAction::Drop,
            1 => ViolationAction::Reset,
            _ => ViolationAction::Reject,
        },
        pipelining: choice & 0x04 != 0,
        not_ftp: if choice & 0x08 != 0 { NotFtpAction::Pass } else { NotFtpAction::Reset },
        deny_commands: vec!["SITE".into()],
        ..Policy::default()
    };
    let mut session = Session::new(endpoints, Arc::new(policy));
    segments::drive(&mut session, data, true);
});

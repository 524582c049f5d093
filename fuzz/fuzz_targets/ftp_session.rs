//! A control session under the permissive policy (translation, hardly any refusal) fed
//! arbitrary segments in both directions (any sequence numbers, overlaps, reordering, flags,
//! ACKs and SACK blocks): nothing may panic.
#![no_main]

use std::{net::Ipv4Addr, sync::Arc};

use gateway_ftp::{
    policy::Policy,
    session::{Endpoints, Session},
};
use libfuzzer_sys::fuzz_target;

mod segments;

fuzz_target!(|data: &[u8]| {
    let endpoints = Endpoints {
        client_real: Ipv4Addr::new(203, 0, 113, 2),
        client_seen: Ipv4Addr::new(203, 0, 113, 2),
        server_real: Ipv4Addr::new(10, 0, 0, 2),
        server_seen: Ipv4Addr::new(203, 0, 113, 1),
    };
    let policy = Policy { max_line: 256, ..Policy::permissive() };
    let mut session = Session::new(endpoints, Arc::new(policy));
    segments::drive(&mut session, data, false);
});

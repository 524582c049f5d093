//! A control session fed arbitrary segments in both directions (any sequence numbers,
//! overlaps, reordering, flags, ACKs and SACK blocks): nothing may panic.
#![no_main]

use std::net::Ipv4Addr;

use gateway_ftp::session::{Endpoints, Session};
use libfuzzer_sys::fuzz_target;

mod segments;

fuzz_target!(|data: &[u8]| {
    let endpoints = Endpoints {
        client_real: Ipv4Addr::new(203, 0, 113, 2),
        client_seen: Ipv4Addr::new(203, 0, 113, 2),
        server_real: Ipv4Addr::new(10, 0, 0, 2),
        server_seen: Ipv4Addr::new(203, 0, 113, 1),
    };
    let mut session = Session::new(endpoints, 256);
    segments::drive(&mut session, data, false);
});

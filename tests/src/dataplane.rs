//! The fast path as the BPF_PROG_TEST_RUN tests (`tests/tests/*_testrun.rs`) and the
//! benchmarks (`tests/benches/fastpath.rs`) set it up: the inside network masqueraded behind
//! a public address, configured on a loaded [`Dataplane`] (after what a caller published).
//! Needs the agent's library: behind the `dataplane` feature.

use std::net::Ipv4Addr;

use gateway_user::{
    config::{Filtering, Forwarding, Ipv4Net, Masquerade, Timeouts},
    dataplane::Dataplane,
};

/// The masquerade of the inside network, `10.0.0.0/24`, behind `public`: every port from
/// 1024, address-dependent filtering.
pub fn masquerade(public: Ipv4Addr) -> Masquerade {
    Masquerade {
        networks: vec![Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 24).expect("a prefix length")],
        addresses: vec![public],
        ports: 1024..=65535,
        filtering: Filtering::AddressDependent,
    }
}

/// Configures `dataplane` to masquerade the inside network behind `public` ([`masquerade`]),
/// with the default timeouts, the kernel forwarding, and the FTP ALG's control ports
/// `alg_ports`.
pub fn masquerading(dataplane: &mut Dataplane, public: Ipv4Addr, alg_ports: &[u16]) {
    dataplane
        .configure_nat(
            Some(&masquerade(public)),
            &Timeouts::default(),
            Forwarding::Kernel,
            alg_ports,
        )
        .expect("configure the masquerade");
}

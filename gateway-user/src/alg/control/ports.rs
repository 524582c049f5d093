//! Public ports the control connections claim in the fast path: a masqueraded client's
//! mapping, and the data ports announced in its session's lines.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4},
    ops::RangeInclusive,
};

use gateway_common::{
    Endpoint, ExpectationKey, IPPROTO_TCP, PORT_ALLOCATION_TRIES, endpoint_flags,
    masquerade::{PortCandidates, public_address_index},
};
use gateway_ftp::session::PortAllocator;

use super::{AlgMaps, AlgSettings, ControlTable};

impl ControlTable {
    /// The public endpoint of a masqueraded client's control connection: its existing
    /// mapping, else its own port on its public address if free, else random ports.
    pub(super) fn masquerade_mapping(
        &mut self,
        client: SocketAddrV4,
        maps: &mut dyn AlgMaps,
    ) -> Option<SocketAddrV4> {
        let masquerade = self.settings.masquerade.as_ref()?;
        let private = Endpoint::from_socket(client, IPPROTO_TCP);
        if let Some(public) = maps.mapping(private) {
            return Some(public.socket());
        }
        // The same public address the fast path would choose for this private address.
        let count = u32::try_from(masquerade.addresses.len()).ok()?;
        let index = public_address_index(client.ip().octets(), count);
        let address = *masquerade.addresses.get(index)?;
        let ports = masquerade.ports.clone();
        let public = allocate(
            &mut self.rng,
            maps,
            address,
            client.port(),
            &ports,
            &self.settings.reserved,
            private,
        )?;
        maps.record_mapping(private, Endpoint::from_socket(public, IPPROTO_TCP));
        Some(public)
    }
}

/// Public ports for announced data endpoints, claimed in the fast path as the ALG's.
pub(super) struct DataPorts<'a> {
    pub rng: &'a mut u64,
    pub maps: &'a mut dyn AlgMaps,
    pub settings: &'a AlgSettings,
    pub claimed: Vec<Endpoint>,
    /// Expectations this session installed and that have not expired (some may have been
    /// used since), those announced in this segment, and the policy's limit.
    pub pending: Vec<ExpectationKey>,
    pub announced: usize,
    pub max_pending: usize,
}

impl PortAllocator for DataPorts<'_> {
    fn may_expect(&mut self) -> bool {
        // Only the ones still in the map count: a used expectation is gone from it.
        let maps = &mut *self.maps;
        self.pending.retain(|key| maps.expectation_pending(*key));
        if self.pending.len() + self.announced >= self.max_pending {
            return false;
        }
        self.announced += 1;
        true
    }

    fn allocate(&mut self, public: Ipv4Addr, private: SocketAddrV4) -> Option<u16> {
        let mut owner = Endpoint::from_socket(private, IPPROTO_TCP);
        owner.flags = endpoint_flags::ALG_CLAIM;
        let ports = self
            .settings
            .masquerade
            .as_ref()
            .filter(|masquerade| masquerade.addresses.contains(&public))
            .map_or(self.settings.data_ports.clone(), |masquerade| {
                masquerade.ports.clone()
            });
        let socket = allocate(
            self.rng,
            self.maps,
            public,
            private.port(),
            &ports,
            &self.settings.reserved,
            owner,
        )?;
        self.claimed
            .push(Endpoint::from_socket(socket, IPPROTO_TCP));
        Some(socket.port())
    }
}

/// Claims a public port on `address` for `owner`: `preferred` if it is in range and free,
/// else random ports in range, `PORT_ALLOCATION_TRIES` probes in all: the fast path's
/// sequence (`PortCandidates`).
fn allocate(
    rng: &mut u64,
    maps: &mut dyn AlgMaps,
    address: Ipv4Addr,
    preferred: u16,
    ports: &RangeInclusive<u16>,
    reserved: &HashSet<SocketAddrV4>,
    owner: Endpoint,
) -> Option<SocketAddrV4> {
    let candidates = PortCandidates::new(*ports.start(), *ports.end(), preferred);
    for attempt in 0..PORT_ALLOCATION_TRIES {
        let port = candidates.candidate(attempt, || next_random(rng));
        let candidate = SocketAddrV4::new(address, port);
        if reserved.contains(&candidate) {
            continue;
        }
        if maps.claim(Endpoint::from_socket(candidate, IPPROTO_TCP), owner) {
            return Some(candidate);
        }
    }
    None
}

/// xorshift64: port choice needs to be unpredictable to outsiders only loosely (the seed
/// comes from the OS); it must not repeat in a short cycle.
fn next_random(state: &mut u64) -> u32 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    (x >> 32) as u32
}

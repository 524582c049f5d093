//! The fast path's maps, taken out of the loaded object once, by name, as typed handles: a
//! map that is missing or of another type is an error at load that names it, and nothing
//! after the load looks a map up again.

use aya::{
    Ebpf,
    maps::{Array, DevMap, DevMapHash, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
};
use gateway_common::{
    Endpoint, ExpectationEntry, ExpectationKey, FlowKey, NatConfig, PeerKey, Session,
    control_ack::ControlAck, names,
};

use super::{DataplaneError, map_error};

pub(super) type Table<K, V> = HashMap<MapData, K, V>;

/// Every map the agent reads or writes (the fast path's own `FRAGMENTS` stays in the object).
pub(super) struct Maps {
    pub publish_dnat: Table<Endpoint, Endpoint>,
    pub publish_snat: Table<Endpoint, Endpoint>,
    pub punt_endpoints: Table<Endpoint, u8>,
    pub stats: PerCpuArray<MapData, u64>,
    pub sessions: Table<FlowKey, Session>,
    pub masq_by_private: Table<Endpoint, Endpoint>,
    pub masq_by_public: Table<Endpoint, Endpoint>,
    pub masq_peers: Table<PeerKey, u64>,
    pub expectations: Table<ExpectationKey, ExpectationEntry>,
    pub control_acks: Table<FlowKey, ControlAck>,
    pub nat_config: Array<MapData, NatConfig>,
    pub layout: Array<MapData, u32>,
    pub redirect_ports: DevMapHash<MapData>,
    /// TC's and XDP's punt tap: a devmap serves programs of one type (see maps.rs of
    /// gateway-ebpf).
    pub punt_tap: DevMap<MapData>,
    pub punt_tap_xdp: DevMap<MapData>,
    /// Until the ALG's reader takes it.
    pub punt: Option<RingBuf<MapData>>,
    /// The fast path's change events for the HA sync (`gateway_common::sync_event`).
    pub sync_events: RingBuf<MapData>,
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Maps, DataplaneError> {
        Ok(Maps {
            publish_dnat: take(ebpf, names::PUBLISH_DNAT)?,
            publish_snat: take(ebpf, names::PUBLISH_SNAT)?,
            punt_endpoints: take(ebpf, names::PUNT_ENDPOINTS)?,
            stats: take(ebpf, names::STATS)?,
            sessions: take(ebpf, names::SESSIONS)?,
            masq_by_private: take(ebpf, names::MASQ_BY_PRIVATE)?,
            masq_by_public: take(ebpf, names::MASQ_BY_PUBLIC)?,
            masq_peers: take(ebpf, names::MASQ_PEERS)?,
            expectations: take(ebpf, names::EXPECTATIONS)?,
            control_acks: take(ebpf, names::CONTROL_ACKS)?,
            nat_config: take(ebpf, names::NAT_CONFIG)?,
            layout: take(ebpf, names::LAYOUT)?,
            redirect_ports: take(ebpf, names::REDIRECT_PORTS)?,
            punt_tap: take(ebpf, names::PUNT_TAP)?,
            punt_tap_xdp: take(ebpf, names::PUNT_TAP_XDP)?,
            punt: Some(take(ebpf, names::PUNT)?),
            sync_events: take(ebpf, names::SYNC_EVENTS)?,
        })
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(map_error(name))
}

/// Removes every key of `table`; entries that vanish meanwhile are no error.
pub(super) fn clear<K, V>(table: &mut Table<K, V>)
where
    K: aya::Pod,
    V: aya::Pod,
{
    let keys: Vec<K> = table.keys().flatten().collect();
    for key in keys {
        let _ = table.remove(&key);
    }
}

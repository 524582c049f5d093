//! The fast path's maps held in memory, as [`AlgMaps`] sees them: the control table's own
//! tests and the fuzz targets drive [`ControlTable::on_packet`](super::ControlTable::on_packet)
//! over it, the entry point production drives over the BPF maps.

use std::collections::HashMap;

use gateway_common::{
    Endpoint, ExpectationEntry, ExpectationKey, FlowKey, control_ack::ControlAck,
};

use super::AlgMaps;

/// Mappings, claimed public endpoints and expectations, with a log of every change in order
/// (`claim <endpoint>`, `expect <endpoint>`, `unexpect <endpoint>`) for a test to read.
/// A claim succeeds unless the endpoint is held (`BPF_NOEXIST`); an expectation stays until
/// it is removed, by the table or by its user (a data connection: remove it from
/// `expectations`).
#[derive(Debug, Default)]
pub struct MemoryMaps {
    pub by_public: HashMap<Endpoint, Endpoint>,
    pub by_private: HashMap<Endpoint, Endpoint>,
    pub expectations: HashMap<ExpectationKey, ExpectationEntry>,
    pub control_acks: HashMap<FlowKey, ControlAck>,
    pub log: Vec<String>,
}

impl AlgMaps for MemoryMaps {
    fn mapping(&mut self, private: Endpoint) -> Option<Endpoint> {
        self.by_private.get(&private).copied()
    }

    fn claim(&mut self, public: Endpoint, owner: Endpoint) -> bool {
        if self.by_public.contains_key(&public) {
            return false;
        }
        self.by_public.insert(public, owner);
        self.log.push(format!("claim {}", public.socket()));
        true
    }

    fn record_mapping(&mut self, private: Endpoint, public: Endpoint) {
        self.by_private.insert(private, public);
    }

    fn expect(&mut self, key: ExpectationKey, entry: ExpectationEntry) -> bool {
        self.log.push(format!("expect {}", key.endpoint.socket()));
        self.expectations.insert(key, entry);
        true
    }

    fn expectation_pending(&mut self, key: ExpectationKey) -> bool {
        self.expectations.contains_key(&key)
    }

    fn unexpect(&mut self, key: ExpectationKey) {
        self.log.push(format!("unexpect {}", key.endpoint.socket()));
        self.expectations.remove(&key);
    }

    fn set_control_ack(&mut self, key: FlowKey, entry: ControlAck) -> bool {
        self.control_acks.insert(key, entry);
        true
    }

    fn remove_control_ack(&mut self, key: FlowKey) {
        self.control_acks.remove(&key);
    }

    fn control_ack_tsval(&mut self, key: FlowKey) -> Option<u32> {
        self.control_acks
            .get(&key)
            .map(|entry| u32::from_be_bytes(entry.last_tsval))
            .filter(|&tsval| tsval != 0)
    }

    fn control_ack_keys(&mut self) -> Vec<FlowKey> {
        self.control_acks.keys().copied().collect()
    }
}

//! What the FTP ALG asks of the maps: expectations for data connections, public endpoints
//! claimed and recorded as the fast path's own allocation does, and the punt ring.

use aya::maps::{MapData, MapError, RingBuf};
use gateway_common::{
    Endpoint, ExpectationEntry, ExpectationKey, FlowKey, control_ack::ControlAck, names,
};

use super::{Dataplane, DataplaneError, map_error, sync::SyncedKey};

impl Dataplane {
    /// Installs an expectation for a data connection (the FTP ALG does this before it lets
    /// the line that announces the connection go on).
    pub fn expect(
        &mut self,
        key: ExpectationKey,
        entry: ExpectationEntry,
    ) -> Result<(), DataplaneError> {
        self.maps
            .expectations
            .insert(key, entry, 0)
            .map_err(map_error(names::EXPECTATIONS))?;
        self.sync_changes.touched(SyncedKey::Expectation(key));
        Ok(())
    }

    /// Lets the programs forward the pure ACKs of one direction of an FTP control connection
    /// (`key`: its packets as they arrive) as `entry` says, instead of punting them.
    pub fn set_control_ack(
        &mut self,
        key: FlowKey,
        entry: ControlAck,
    ) -> Result<(), DataplaneError> {
        self.maps
            .control_acks
            .insert(key, entry, 0)
            .map_err(map_error(names::CONTROL_ACKS))
    }

    /// The `CONTROL_ACKS` entry of one direction of a control connection, if any.
    pub fn control_ack(&self, key: FlowKey) -> Result<Option<ControlAck>, DataplaneError> {
        match self.maps.control_acks.get(&key, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(map_error(names::CONTROL_ACKS)(err)),
        }
    }

    /// Removes a direction's `CONTROL_ACKS` entry: its pure ACKs go to the agent again.
    pub fn remove_control_ack(&mut self, key: FlowKey) -> Result<(), DataplaneError> {
        match self.maps.control_acks.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) =>
            {
                Ok(())
            }
            Err(err) => Err(map_error(names::CONTROL_ACKS)(err)),
        }
    }

    /// Every direction `CONTROL_ACKS` has an entry for.
    pub fn control_ack_keys(&self) -> Result<Vec<FlowKey>, DataplaneError> {
        self.maps
            .control_acks
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_error(names::CONTROL_ACKS))
    }

    /// Whether an expectation is in the map (not used yet, not removed).
    pub fn expectation_exists(&self, key: ExpectationKey) -> Result<bool, DataplaneError> {
        Ok(self.maps.expectations.get(&key, 0).is_ok())
    }

    /// Removes an expectation (its control connection ended); one already used is gone.
    pub fn unexpect(&mut self, key: ExpectationKey) -> Result<(), DataplaneError> {
        self.sync_changes.touched(SyncedKey::Expectation(key));
        match self.maps.expectations.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) =>
            {
                Ok(())
            }
            Err(err) => Err(map_error(names::EXPECTATIONS)(err)),
        }
    }

    /// The live public mapping of a private endpoint, as the fast path would reuse it.
    pub fn masquerade_mapping(
        &self,
        private: Endpoint,
    ) -> Result<Option<Endpoint>, DataplaneError> {
        let Ok(public) = self.maps.masq_by_private.get(&private, 0) else {
            return Ok(None);
        };
        let owner = self.maps.masq_by_public.get(&public, 0).ok();
        Ok((owner == Some(private)).then_some(public))
    }

    /// Claims a public endpoint for `owner` unless it is taken (`BPF_NOEXIST`, as the fast
    /// path's own allocation does, so the two never hand out one port twice).
    pub fn claim_public(
        &mut self,
        public: Endpoint,
        owner: Endpoint,
    ) -> Result<bool, DataplaneError> {
        const BPF_NOEXIST: u64 = 1;
        match self.maps.masq_by_public.insert(public, owner, BPF_NOEXIST) {
            Ok(()) => {
                self.sync_changes.touched(SyncedKey::ByPublic(public));
                Ok(true)
            }
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) =>
            {
                Ok(false)
            }
            Err(err) => Err(map_error(names::MASQ_BY_PUBLIC)(err)),
        }
    }

    /// Records `private`'s mapping to `public` (claimed before) for reuse by later connections.
    pub fn record_mapping(
        &mut self,
        private: Endpoint,
        public: Endpoint,
    ) -> Result<(), DataplaneError> {
        self.maps
            .masq_by_private
            .insert(private, public, 0)
            .map_err(map_error(names::MASQ_BY_PRIVATE))?;
        self.sync_changes.touched(SyncedKey::ByPrivate(private));
        Ok(())
    }

    /// Takes the punt ring buffer, for the ALG's reader (once: it has one reader).
    pub fn take_punt_ring(&mut self) -> Result<RingBuf<MapData>, DataplaneError> {
        self.maps.punt.take().ok_or(DataplaneError::Missing {
            kind: "map (taken already)",
            name: names::PUNT,
        })
    }
}

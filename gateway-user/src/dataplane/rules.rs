//! What the agent's config becomes in the maps: published servers, the masquerade rule and
//! timeouts, the interfaces' roles, where XDP may redirect and where punts go.

use gateway_common::{Endpoint, Ipv4Cidr, NatConfig, PuntReason, names};

use super::{Dataplane, DataplaneError, map_error, maps::clear};
use crate::config::{Filtering, Forwarding, Masquerade, Publish, Timeouts};

impl Dataplane {
    /// Empties the published-server maps (an adopted fast path may hold publishes the new
    /// config no longer has).
    pub fn clear_publishes(&mut self) -> Result<(), DataplaneError> {
        clear(&mut self.maps.publish_dnat);
        clear(&mut self.maps.publish_snat);
        clear(&mut self.maps.punt_endpoints);
        Ok(())
    }

    /// Installs the published servers in both directions' maps.
    pub fn publish(&mut self, publishes: &[Publish]) -> Result<(), DataplaneError> {
        let maps = &mut self.maps;
        for (table, name, inbound) in [
            (&mut maps.publish_dnat, names::PUBLISH_DNAT, true),
            (&mut maps.publish_snat, names::PUBLISH_SNAT, false),
        ] {
            for publish in publishes {
                let proto = publish.protocol.number();
                let public = Endpoint::from_socket(publish.public, proto);
                let private = Endpoint::from_socket(publish.private, proto);
                let (key, value) = if inbound {
                    (public, private)
                } else {
                    (private, public)
                };
                table.insert(key, value, 0).map_err(map_error(name))?;
            }
        }
        // Control connections of published FTP servers go to the ALG, both directions.
        for publish in publishes.iter().filter(|publish| publish.alg.is_some()) {
            let proto = publish.protocol.number();
            for (endpoint, reason) in [
                (publish.public, PuntReason::PublishedFromClient),
                (publish.private, PuntReason::PublishedFromServer),
            ] {
                self.maps
                    .punt_endpoints
                    .insert(Endpoint::from_socket(endpoint, proto), reason as u8, 0)
                    .map_err(map_error(names::PUNT_ENDPOINTS))?;
            }
        }
        Ok(())
    }

    /// Removes published servers (the inverse of [`Dataplane::publish`]).
    pub fn unpublish(&mut self, publishes: &[Publish]) -> Result<(), DataplaneError> {
        for publish in publishes {
            let proto = publish.protocol.number();
            let public = Endpoint::from_socket(publish.public, proto);
            let private = Endpoint::from_socket(publish.private, proto);
            let _ = self.maps.publish_dnat.remove(&public);
            let _ = self.maps.publish_snat.remove(&private);
            let _ = self.maps.punt_endpoints.remove(&public);
            let _ = self.maps.punt_endpoints.remove(&private);
        }
        Ok(())
    }

    /// Writes the masquerade rule and the timeouts (no masquerade: `None`, which also turns
    /// off the session table).
    pub fn configure_nat(
        &mut self,
        masquerade: Option<&Masquerade>,
        timeouts: &Timeouts,
        forwarding: Forwarding,
        ftp_control_ports: &[u16],
    ) -> Result<(), DataplaneError> {
        let seconds = |s: u64| s.saturating_mul(1_000_000_000);
        let mut config = NatConfig {
            tcp_established_timeout_ns: seconds(timeouts.tcp_established),
            tcp_transitory_timeout_ns: seconds(timeouts.tcp_transitory),
            udp_timeout_ns: seconds(timeouts.udp),
            icmp_timeout_ns: seconds(timeouts.icmp),
            bpf_forwarding: u32::from(forwarding == Forwarding::Bpf),
            sync_events: u32::from(self.sync_changes.enabled()),
            ..NatConfig::default()
        };
        if let Some(masquerade) = masquerade {
            for (slot, net) in config.networks.iter_mut().zip(&masquerade.networks) {
                *slot = Ipv4Cidr {
                    addr: net.network().octets(),
                    mask: net.netmask().octets(),
                };
            }
            for (slot, addr) in config.addresses.iter_mut().zip(&masquerade.addresses) {
                *slot = addr.octets();
            }
            config.network_count = masquerade.networks.len().min(config.networks.len()) as u32;
            config.address_count = masquerade.addresses.len().min(config.addresses.len()) as u32;
            config.port_min = *masquerade.ports.start();
            config.port_max = *masquerade.ports.end();
            config.filtering = match masquerade.filtering {
                Filtering::AddressDependent => gateway_common::Filtering::AddressDependent,
                Filtering::AddressAndPortDependent => {
                    gateway_common::Filtering::AddressAndPortDependent
                }
                Filtering::EndpointIndependent => gateway_common::Filtering::EndpointIndependent,
            } as u32;
            for (slot, port) in config.ftp_control_ports.iter_mut().zip(ftp_control_ports) {
                *slot = port.to_be_bytes();
            }
            config.ftp_control_port_count =
                ftp_control_ports.len().min(config.ftp_control_ports.len()) as u32;
        }
        self.maps
            .nat_config
            .set(0, config, 0)
            .map_err(map_error(names::NAT_CONFIG))
    }

    /// Tells the fast path which interface is which (after [`Dataplane::configure_nat`]).
    pub fn set_interface_roles(
        &mut self,
        inside_ifindex: u32,
        outside_ifindex: u32,
    ) -> Result<(), DataplaneError> {
        let array = &mut self.maps.nat_config;
        let mut config = array.get(&0, 0).map_err(map_error(names::NAT_CONFIG))?;
        config.inside_ifindex = inside_ifindex;
        config.outside_ifindex = outside_ifindex;
        array
            .set(0, config, 0)
            .map_err(map_error(names::NAT_CONFIG))
    }

    /// Sets the interfaces XDP may redirect translated packets to: exactly `ifindexes` (the
    /// interfaces the fast path is attached to; an interface that came back has a new index,
    /// and the old one must not stay). Packets routed anywhere else go through the stack.
    pub fn set_redirect_ports(&mut self, ifindexes: &[u32]) -> Result<(), DataplaneError> {
        let ports = &mut self.maps.redirect_ports;
        let stale: Vec<u32> = ports
            .keys()
            .flatten()
            .filter(|key| !ifindexes.contains(key))
            .collect();
        for key in stale {
            let _ = ports.remove(key);
        }
        for &ifindex in ifindexes.iter().filter(|&&ifindex| ifindex != 0) {
            ports
                .insert(ifindex, ifindex, None, 0)
                .map_err(|source| DataplaneError::RedirectPort { ifindex, source })?;
        }
        Ok(())
    }

    /// Publishes the agent's punt tap to both programs (`None`: punt into the ring). The
    /// kernel empties the slots itself when the tap is unregistered, so a tap that went away
    /// with its agent never stays a redirect target.
    pub fn set_punt_tap(&mut self, ifindex: Option<u32>) -> Result<(), DataplaneError> {
        // Index 0 empties a devmap array's slot (aya's DevMap has no delete).
        let ifindex = ifindex.unwrap_or(0);
        for tap in [&mut self.maps.punt_tap, &mut self.maps.punt_tap_xdp] {
            tap.set(0, ifindex, None, 0)
                .map_err(|source| DataplaneError::PuntTap { ifindex, source })?;
        }
        Ok(())
    }

    /// The ifindex TC punts to, if any (see [`Dataplane::set_punt_tap`]).
    pub fn punt_tap(&self) -> Result<Option<u32>, DataplaneError> {
        match self.maps.punt_tap.get(0, 0) {
            Ok(value) => Ok(Some(value.if_index)),
            // An empty slot.
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(map_error(names::PUNT_TAP)(err)),
        }
    }
}

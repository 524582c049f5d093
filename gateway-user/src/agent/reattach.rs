//! Interfaces that go away and come back: the fast path waits for them and re-attaches.

use super::{Agent, startup::warn_of_veth_redirect};
use crate::system;

impl Agent {
    /// Notices an interface that went away (its links went with it) and re-attaches when it
    /// is back, with a new ifindex: roles, links and host settings are redone.
    /// A standby attaches nothing (its promotion does).
    pub(super) fn check_interfaces(&mut self) {
        if !self.passes_traffic() {
            return;
        }
        let names = [
            self.config.interfaces.inside.clone(),
            self.config.interfaces.outside.clone(),
        ];
        for (slot, name) in names.iter().enumerate() {
            let now = system::if_index(name);
            let attached = self.attachments[slot].is_some();
            match now {
                Some(index) if attached && index == self.ifindexes[slot] => {}
                None if !attached => {}
                None => {
                    // Its links went with it; a pinned one is only a stale pin now.
                    if let Some(attachment) = self.attachments[slot].take() {
                        let _ = self.dataplane.detach(attachment);
                    }
                    tracing::warn!(interface = %name, "interface gone: the fast path waits for it to come back");
                    self.refresh_redirect_ports();
                }
                Some(index) => {
                    if let Some(attachment) = self.attachments[slot].take() {
                        let _ = self.dataplane.detach(attachment);
                    }
                    // The new interface has the host's defaults: set (or, unmanaged, check)
                    // them before the fast path translates there again.
                    if let Some(host_settings) = &mut self.host_settings
                        && let Err(err) = host_settings.interface_back(name, index)
                    {
                        tracing::warn!(interface = %name, "{err}");
                    }
                    match self.dataplane.attach(name, self.hook, self.xdp_mode) {
                        Ok(attachment) => {
                            self.ifindexes[slot] = index;
                            if let Err(err) = self
                                .dataplane
                                .set_interface_roles(self.ifindexes[0], self.ifindexes[1])
                            {
                                tracing::warn!("cannot update interface roles: {err}");
                            }
                            tracing::info!(
                                interface = %name, ifindex = index, hook = %attachment.hook,
                                "interface back: fast path re-attached"
                            );
                            warn_of_veth_redirect(&attachment, self.config.dataplane.forwarding);
                            self.attachments[slot] = Some(attachment);
                            self.refresh_redirect_ports();
                        }
                        Err(err) => tracing::warn!(interface = %name, "cannot re-attach: {err:#}"),
                    }
                }
            }
        }
    }

    /// Lets XDP redirect to exactly the interfaces attached now (a returning interface has a
    /// new ifindex; a gone one's index may be reused by another device).
    pub(super) fn refresh_redirect_ports(&mut self) {
        let attached: Vec<u32> = self
            .attachments
            .iter()
            .zip(self.ifindexes)
            .filter(|(attachment, _)| attachment.is_some())
            .map(|(_, ifindex)| ifindex)
            .collect();
        if let Err(err) = self.dataplane.set_redirect_ports(&attached) {
            tracing::warn!("cannot update the XDP redirect ports: {err:#}");
        }
    }
}

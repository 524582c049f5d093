//! `gateway ha master|backup|fault`: keepalived's notify hooks set the node's role, and the
//! fast path follows it: attached on promotion to master, detached on `backup` or `fault`.
//! A node with `[ha]` starts detached (see `startup`), and the once-a-second interface
//! check re-attaches nothing while it is a standby.
//!
//! With `[ha] key_file`, the state sync ([`crate::ha::sync`]) follows the role too: a master
//! streams its maps and its ALG's control sessions to the peer, a standby writes what it
//! receives into its own maps and holds the control sessions aside. On promotion the ALG
//! takes those over (before the programs attach, so that the first punted segment finds
//! them), and the fast path's pure-ACK entries (`CONTROL_ACKS`) are rebuilt from them; on
//! demotion the ALG's own sessions are held aside until the new master's snapshot.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};

use super::{Agent, startup::warn_of_veth_redirect};
use crate::{
    ha::{
        Role, Transition,
        sync::{SyncEvent, SyncEvents, SyncState},
    },
    management::HaStatus,
    metrics::HaSnapshot,
    system,
};

impl Agent {
    /// Whether the fast path should be attached: always for a single gateway, only as
    /// master for a node of a pair.
    pub(super) fn passes_traffic(&self) -> bool {
        self.ha
            .as_ref()
            .is_none_or(|state| state.role().passes_traffic())
    }

    /// Takes the role keepalived gives; attaches or detaches the programs for it.
    pub(super) fn set_role(&mut self, role: Role) -> anyhow::Result<HaStatus> {
        let asked = Instant::now();
        let Some(state) = &mut self.ha else {
            bail!(
                "this gateway has no [ha] table in {}: it is a single node, always active",
                self.config_path.display()
            );
        };
        let from = state.role();
        let transition = state.change(role);
        if let Some(sync) = &mut self.sync {
            sync.set_master(role.passes_traffic());
        }
        match transition {
            Transition::Unchanged => {}
            Transition::StandbyToStandby => {
                tracing::info!(%from, to = %role, "ha: role changed; the fast path stays detached");
            }
            Transition::Detach => {
                // Forwarding off first: meanwhile the programs still translate what they
                // see, and a packet they hand to the stack goes no further. The other way
                // round, the kernel would forward untranslated for a moment.
                self.set_standby_sysctls(true);
                self.detach_all();
                self.hold_alg_aside();
                tracing::info!(%from, to = %role, "ha: demoted: fast path detached, this node passes nothing");
            }
            Transition::Attach => {
                // Attached first, then forwarding: until it is on, the programs' route
                // lookups refuse (`bpf_fib_lookup` honours it) and the stack forwards
                // nothing, for the microseconds between; the other way round, the kernel
                // would forward untranslated meanwhile.
                self.take_over_alg();
                let failed = self.attach_all();
                self.set_standby_sysctls(false);
                let took = asked.elapsed();
                if let Some(state) = &mut self.ha {
                    state.promoted(took);
                }
                if failed.is_empty() {
                    tracing::info!(
                        %from, to = %role, promotion_ms = took.as_secs_f64() * 1e3,
                        "ha: promoted: fast path attached"
                    );
                } else {
                    bail!(
                        "promoted to master, but cannot attach to {}: retried every second",
                        failed.join(", ")
                    );
                }
            }
        }
        self.ha_status()
            .ok_or_else(|| anyhow::anyhow!("ha state vanished"))
    }

    /// A standby's interfaces do not forward; a master's do (see
    /// `HostSettings::set_standby`). A failure is logged: the role change stands.
    fn set_standby_sysctls(&mut self, standby: bool) {
        if let Some(host_settings) = &mut self.host_settings
            && let Err(err) = host_settings.set_standby(standby)
        {
            tracing::warn!("ha: cannot set the sysctls for the new role: {err}");
        }
    }

    /// Attaches the programs to every configured interface that is there and not attached
    /// yet; returns the ones it could not attach to (with why), which the interface check
    /// retries.
    fn attach_all(&mut self) -> Vec<String> {
        let names = [
            self.config.interfaces.inside.clone(),
            self.config.interfaces.outside.clone(),
        ];
        let mut failed = Vec::new();
        for (slot, name) in names.iter().enumerate() {
            if self.attachments[slot].is_some() {
                continue;
            }
            let Some(index) = system::if_index(name) else {
                failed.push(format!("{name} (gone)"));
                continue;
            };
            if index != self.ifindexes[slot] {
                // It came back while this node was a standby: the new device has the
                // host's defaults.
                if let Some(host_settings) = &mut self.host_settings
                    && let Err(err) = host_settings.interface_back(name, index)
                {
                    tracing::warn!(interface = %name, "{err}");
                }
                self.ifindexes[slot] = index;
            }
            match self.dataplane.attach(name, self.hook, self.xdp_mode) {
                Ok(attachment) => {
                    warn_of_veth_redirect(&attachment, self.config.dataplane.forwarding);
                    self.attachments[slot] = Some(attachment);
                }
                Err(err) => failed.push(format!("{name} ({err})")),
            }
        }
        if let Err(err) = self
            .dataplane
            .set_interface_roles(self.ifindexes[0], self.ifindexes[1])
        {
            tracing::warn!("cannot update interface roles: {err}");
        }
        self.refresh_redirect_ports();
        failed
    }

    /// Detaches the programs from every interface: this node passes nothing. The maps and
    /// their entries stay.
    fn detach_all(&mut self) {
        for attachment in self.attachments.iter_mut().filter_map(Option::take) {
            let interface = attachment.interface.clone();
            if let Err(err) = self.dataplane.detach(attachment) {
                tracing::warn!(%interface, %err, "detach failed");
            }
        }
        self.refresh_redirect_ports();
    }

    /// Promotion: the ALG takes over the control sessions the sync brought (if it brought
    /// any), and the fast path's pure-ACK entries are rebuilt from them. They are rebuilt,
    /// not synced: an entry follows from its session (`sync_control_acks`) but for the last
    /// timestamp the fast path forwarded, which changes with every ACK and which the next
    /// forwarded ACK writes again; syncing them would stream a record per ACK.
    fn take_over_alg(&mut self) {
        let Some(sync) = &mut self.sync else {
            return;
        };
        let held = sync.take_held_alg();
        let Some(taken) = self.alg.table.take_over(held) else {
            return;
        };
        self.alg.table.adopt_control_acks(&mut self.dataplane);
        self.alg.save_state();
        tracing::info!(
            sessions = taken,
            "ha: took over the ftp control sessions of the previous master"
        );
    }

    /// Demotion: the ALG's own sessions are held aside (nothing acts on them: no timer, no
    /// expiry touching the maps the new master's sync now writes) until the new master's
    /// snapshot replaces them.
    fn hold_alg_aside(&mut self) {
        let Some(sync) = &mut self.sync else {
            return;
        };
        let held = self.alg.table.hold_aside();
        self.alg.save_state();
        sync.hold_alg(held);
    }

    /// Starts the state sync if `[ha]` has a key (inside the runtime).
    pub(super) fn start_sync(&mut self) -> anyhow::Result<()> {
        let Some(ha) = &self.config.ha else {
            return Ok(());
        };
        let Some(key) = &ha.key else {
            tracing::warn!(
                "ha: no key_file in [ha]: no state sync, a failover loses the established flows"
            );
            return Ok(());
        };
        let sync = SyncState::start(ha, key).with_context(|| {
            format!(
                "cannot listen for the state sync on {}:{} ([ha] listen and sync_port; the address must be one of this node's)",
                ha.listen, ha.sync_port
            )
        })?;
        // The fast path names what it changes from now on, for the sync to send.
        self.dataplane
            .set_sync_events(true)
            .context("cannot turn on the fast path's change events")?;
        tracing::info!(peer = %ha.peer, listen = %ha.listen, port = ha.sync_port, "ha: state sync listening");
        self.alg.sync = Some(sync.alg_outbox());
        self.sync = Some(sync);
        Ok(())
    }

    pub(super) fn on_sync_event(&mut self, event: SyncEvent) {
        let Some(sync) = &mut self.sync else {
            return;
        };
        match event {
            SyncEvent::Walk => {
                sync.walk(&mut self.dataplane);
                // A snapshot of the control sessions due (a standby just connected) goes
                // now, not at the next punted packet.
                self.alg.sync_state();
            }
            SyncEvent::Incoming(incoming) => sync.apply(&mut self.dataplane, incoming),
        }
    }

    pub(super) fn ha_status(&self) -> Option<HaStatus> {
        let (config, state) = (self.config.ha.as_ref()?, self.ha.as_ref()?);
        Some(HaStatus {
            node_id: config.node_id,
            peer: format!("{}:{}", config.peer, config.sync_port),
            role: state.role(),
            since_unix_seconds: state
                .since()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            for_seconds: SystemTime::now()
                .duration_since(state.since())
                .map_or(0, |elapsed| elapsed.as_secs()),
            transitions: state.transitions(),
            attached: self.attachments.iter().all(Option::is_some),
            promotions: state.promotions(),
            last_promotion_ms: state.last_promotion().map(|took| took.as_secs_f64() * 1e3),
            sync: self.sync.as_ref().map(SyncState::status),
        })
    }

    pub(super) fn ha_snapshot(&self) -> Option<HaSnapshot> {
        let state = self.ha.as_ref()?;
        Some(HaSnapshot {
            role: state.role(),
            transitions: state.transitions(),
            promotions: state.promotions(),
            last_promotion_seconds: state.last_promotion().map(|took| took.as_secs_f64()),
            sync: self.sync.as_ref().map(SyncState::status),
        })
    }
}

/// The sync's next event, or never without a sync.
pub(super) async fn next_sync_event(events: Option<&mut SyncEvents>) -> SyncEvent {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

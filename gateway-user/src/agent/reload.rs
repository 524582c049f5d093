//! `gateway reload`: the config file read again and its difference from the running one
//! ([`Config::diff`]) applied, every session kept.

use anyhow::{anyhow, bail};

use super::{
    Agent,
    startup::{apply_cpu_wakeup_latency, apply_realtime_priority},
};
use crate::{alg::control::AlgSettings, config::Config};

impl Agent {
    /// Re-reads the config and applies what changed, keeping every session. An invalid file,
    /// or a change that needs a restart, is refused and the running configuration stays.
    pub(super) fn reload(&mut self) -> anyhow::Result<Vec<String>> {
        let new = Config::load(&self.config_path)
            .map_err(|err| anyhow!("{err}; the running configuration stays"))?;
        let diff = self.config.diff(&new);
        if let Some(part) = diff.restart.first() {
            bail!(
                "{} changed: that needs a restart of the gateway; nothing was applied",
                part.key()
            );
        }
        // Before anything is applied: the sysctls may have been changed behind the agent's
        // back. Managed, they are set again (and said); unmanaged, a wrong one refuses the
        // reload as it would refuse a start.
        let mut changes = match &mut self.host_settings {
            Some(host_settings) => host_settings
                .recheck()
                .map_err(|err| anyhow!("{err}; nothing was applied"))?,
            None => Vec::new(),
        };
        // First, as the one change that can still fail on its own: nothing is applied then.
        if let Some(priority) = diff.realtime_priority {
            apply_realtime_priority(priority)?;
            changes.push(format!(
                "agent priority {}",
                priority.map_or("ordinary".to_owned(), |priority| format!(
                    "SCHED_FIFO {priority}"
                ))
            ));
        }
        // Then the CPU wake-up latency, which fails only where the device is missing or closed
        // to the agent (as a start with it would).
        if let Some(us) = diff.cpu_wakeup_latency_us {
            apply_cpu_wakeup_latency(&mut self.cpu_latency, us)?;
            changes.push(
                us.map_or("no CPU wake-up latency request".to_owned(), |us| {
                    format!("CPU wake-up latency {us} us")
                }),
            );
        }
        if !diff.unpublished.is_empty() {
            self.dataplane.unpublish(&diff.unpublished)?;
            changes.push(format!(
                "{} publish entries removed",
                diff.unpublished.len()
            ));
        }
        if !diff.published.is_empty() {
            self.dataplane.publish(&diff.published)?;
            changes.push(format!("{} publish entries added", diff.published.len()));
        }
        if diff.nat {
            self.dataplane.configure_nat(
                new.masquerade.as_ref(),
                &new.timeouts,
                new.dataplane.forwarding,
                &new.ftp.control_ports,
            )?;
            self.dataplane
                .set_interface_roles(self.ifindexes[0], self.ifindexes[1])?;
            changes.push("masquerade, timeouts and control ports applied".into());
        }
        if diff.alg {
            self.alg.table.set_settings(AlgSettings::from_config(&new));
            changes.push("ftp settings and policies applied (running sessions included)".into());
        }
        if let Some(seconds) = diff.sweep_interval {
            changes.push(format!("sweep interval {seconds}s"));
        }
        if changes.is_empty() {
            changes.push("no change".into());
        }
        tracing::info!(changes = %changes.join("; "), "configuration reloaded");
        self.config = new;
        Ok(changes)
    }
}

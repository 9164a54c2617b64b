//! Reaching a libvirt VM's agent: waiting for it at boot, leasing one of its channels, and
//! the console tail that explains a boot that failed.

use std::time::{Duration, Instant};

use log::{debug, info};

use super::{LibvirtHost, secret_volume, serial_log_volume};
use crate::agent::AgentClient;
use crate::libvirt::{DomainState, LibvirtError};
use crate::progress::{self, Reporter, Stage};
use crate::{Error, Result, VmSpec};

impl LibvirtHost {
    /// Waits until the VM's agent answers; fails with the console's tail when it does not.
    pub(super) async fn wait_for_agent(
        &self,
        spec: &VmSpec,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        // A network boot boots kiln's image; a disk-only boot, whatever is on the disk.
        let kiln_image = spec.boot_order().is_empty() || super::boot::boots_from_network(spec);
        if !self.runs_guests() || !kiln_image {
            return Ok(());
        }
        self.agent_ready(spec.name(), Duration::from_secs(5), reporter)
            .await
    }

    /// Tries the agent until it answers (each try waiting at most `attempt`) or the boot
    /// timeout passes.
    pub(super) async fn agent_ready(
        &self,
        name: &str,
        attempt: Duration,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        progress::stage(reporter, Stage::WaitAgent, async {
            let started = Instant::now();
            let deadline = started + self.boot_timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.agent_within(name, left.min(attempt)).await {
                    Ok(agent) => {
                        agent.ping().await?;
                        info!("{name} answered after {:.1?}", started.elapsed());
                        return Ok(());
                    }
                    Err(err) if Instant::now() < deadline => {
                        debug!("{name} not ready yet: {err}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(err) => {
                        return Err(Error::BootFailed {
                            name: name.to_owned(),
                            reason: err.to_string(),
                            serial_tail: self.serial_tail(name),
                        });
                    }
                }
            }
        })
        .await
    }

    /// Where a VM's console is logged on the libvirt host, if it is.
    pub(super) fn serial_log(&self, name: &str) -> Option<String> {
        let options = self.conn.options();
        options
            .log_serial
            .then(|| format!("{}/{}", options.pool_path, serial_log_volume(name)))
    }

    /// The end of a VM's console log, when the host is this machine.
    pub fn serial_tail(&self, name: &str) -> String {
        match self.serial_log(name) {
            Some(log) if self.conn.is_local() => crate::vm::log_tail(log.as_ref(), 20),
            _ => String::new(),
        }
    }

    /// The guest's secret, from its `0600` volume.
    async fn agent_secret(&self, name: &str) -> Result<Vec<u8>> {
        // The guest reads the hex text from fw_cfg, so the text (not the bytes it encodes) is
        // the shared secret. It lives in a 0600 volume, read through libvirt (so on remote
        // hosts too), never in the domain's XML.
        Ok(self
            .conn
            .read_volume(
                &secret_volume(name),
                0,
                2 * kiln_proto::handshake::SECRET_LEN,
            )
            .await?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| LibvirtError::NoAgentChannel {
                uri: self.uri().to_owned(),
                name: name.to_owned(),
            })?)
    }

    /// Re-keys a guest restored from a memory snapshot with its own name and secret and a
    /// fresh random seed: its agent reseeds the CRNG (every revert of the snapshot would
    /// share it) and remounts the config drive (made at the VM's last start).
    pub(super) async fn rekey_restored(&self, name: &str) -> Result<()> {
        let secret = self.agent_secret(name).await?;
        let mut seed = [0u8; 64];
        crate::state::random_bytes(&mut seed, std::path::Path::new(&secret_volume(name)))?;
        let agent = self.agent_within(name, Duration::from_secs(10)).await?;
        Ok(agent.set_identity(name, &secret, &seed).await?)
    }

    pub(super) async fn agent_within(&self, name: &str, timeout: Duration) -> Result<AgentClient> {
        let state = self.running_domain(name).await?;
        let no_channel = || LibvirtError::NoAgentChannel {
            uri: self.uri().to_owned(),
            name: name.to_owned(),
        };
        let secret = self.agent_secret(name).await?;
        if state.observed.agent_ports == 0 {
            return Err(no_channel().into());
        }
        // Through libvirt even when the host is this one: libvirt is what leases a channel
        // to one client at a time, remote or local.
        let ports =
            crate::libvirt::ChannelPorts::new(self.conn.clone(), name, state.observed.agent_ports);
        let patience = crate::agent::Patience::new(timeout);
        Ok(crate::agent::connect(&ports, &secret, patience).await?)
    }

    pub(super) async fn running_domain(&self, name: &str) -> Result<DomainState> {
        match self.conn.domain(name).await? {
            // Its agent cannot answer: say so now rather than time out.
            Some(state) if state.paused => Err(Error::WrongState {
                name: name.to_owned(),
                state: crate::VmState::Paused,
                action: "exec",
                needed: crate::VmState::Running,
            }),
            Some(state) if state.active => Ok(state),
            // The same refusal as the daemonless backend's.
            Some(_) => Err(Error::WrongState {
                name: name.to_owned(),
                state: crate::VmState::Stopped,
                action: "exec",
                needed: crate::VmState::Running,
            }),
            None => Err(Error::VmNotFound {
                name: name.to_owned(),
            }),
        }
    }
}

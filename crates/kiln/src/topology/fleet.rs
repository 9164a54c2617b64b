//! Every VM of this user, wherever it runs: the daemonless ones on this machine and those
//! on the libvirt hosts kiln remembers ([`KnownHosts`]). This is how `kiln exec web-1`
//! finds `web-1` without being told where it is.

use std::time::Duration;

use futures_util::future::join_all;
use log::debug;

use super::{Host, LibvirtHost, LocalHost};
use crate::progress::Reporter;
use crate::state::KnownHosts;
use crate::{AgentClient, Error, Kiln, Result, VmInfo, VmSpec};

/// How long a VM's agent may take to answer a client (it may wait for a free port).
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The host a VM was found on. It derefs to [`Host`]: every verb, whatever the host is.
#[derive(Debug)]
pub struct Located {
    host: Box<dyn Host>,
    /// The libvirt URI, for a VM on a libvirt host.
    uri: Option<String>,
}

impl Located {
    fn local(kiln: &Kiln) -> Self {
        Self {
            host: Box::new(LocalHost::new(kiln.clone())),
            uri: None,
        }
    }

    fn libvirt(host: LibvirtHost) -> Self {
        Self {
            uri: Some(host.uri().to_owned()),
            host: Box::new(host),
        }
    }

    /// The libvirt URI the VM is on; `None` for this machine's daemonless VMs.
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }
}

impl std::ops::Deref for Located {
    type Target = dyn Host;

    fn deref(&self) -> &Self::Target {
        self.host.as_ref()
    }
}

/// What `kiln ls` shows: the VMs, and the hosts that could not be asked. As JSON the
/// unreachable hosts are `{"host": URI, "error": MESSAGE}` objects.
#[derive(Debug, Default, serde::Serialize)]
pub struct Listing {
    /// Every VM found, on every host that answered.
    pub vms: Vec<VmInfo>,
    /// The hosts that did not answer, each with why.
    #[serde(serialize_with = "unreachable_hosts")]
    pub unreachable: Vec<(String, Error)>,
}

fn unreachable_hosts<S: serde::Serializer>(
    hosts: &[(String, Error)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = serializer.serialize_seq(Some(hosts.len()))?;
    for (host, error) in hosts {
        seq.serialize_element(&serde_json::json!({
            "host": host,
            "error": error.to_string(),
        }))?;
    }
    seq.end()
}

/// One host, as `kiln hosts` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostInfo {
    /// `local`, or the libvirt URI.
    pub host: String,
    /// Whether it answered.
    pub reachable: bool,
    /// kiln's VMs on it.
    pub vms: usize,
    /// Its free memory, in bytes; `None` when unknown.
    pub free_memory_bytes: Option<u64>,
    /// Its CPUs; `None` when unknown.
    pub cpus: Option<u32>,
    /// How the connection authenticates the client.
    pub transport: String,
    /// Whether it does (plain `qemu+tcp` does not).
    pub authenticated: bool,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// The local VMs and the remembered libvirt hosts.
#[derive(Debug, Clone)]
pub struct Fleet {
    kiln: Kiln,
    hosts: KnownHosts,
    boot_timeout: Duration,
}

impl Fleet {
    /// The local VMs of `kiln` and the libvirt hosts its state remembers; hosts are reached
    /// with `kiln`'s image cache and boot timeout.
    pub fn new(kiln: Kiln) -> Self {
        Self {
            hosts: KnownHosts::new(kiln.paths()),
            boot_timeout: kiln.boot_policy().timeout,
            kiln,
        }
    }

    /// The kiln of the local VMs.
    pub fn kiln(&self) -> &Kiln {
        &self.kiln
    }

    /// A libvirt host, with this fleet's image cache and boot timeout.
    pub async fn connect(&self, uri: &str) -> Result<LibvirtHost> {
        let mut host = LibvirtHost::connect(uri, self.kiln.paths())
            .await?
            .with_boot_timeout(self.boot_timeout)
            .with_images(self.kiln.images().clone());
        if let Some(inputs) = self.kiln.image_inputs() {
            host = host.with_image_inputs(inputs.clone());
        }
        Ok(host)
    }

    /// Creates a VM on a libvirt host and remembers the host. It is remembered first, so
    /// whatever a failed or killed `up` leaves there still shows in `ls`.
    pub async fn up_on(&self, uri: &str, spec: &VmSpec, reporter: &dyn Reporter) -> Result<()> {
        let host = self.connect(uri).await?;
        self.hosts.remember(uri).await?;
        host.up(spec, reporter).await
    }

    /// Every host kiln knows: this machine, then each remembered libvirt host, with whether
    /// it answers, its kiln VMs, its free memory and how its transport authenticates. The
    /// hosts are asked at once: one slow to answer holds up none of the others.
    pub async fn hosts(&self) -> Result<Vec<HostInfo>> {
        let local = self.kiln.list().await?;
        let mut hosts = vec![HostInfo {
            host: "local".to_owned(),
            reachable: true,
            vms: local.len(),
            free_memory_bytes: crate::accel::host_free_memory_bytes(),
            cpus: std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok()),
            transport: "this machine (daemonless QEMU)".to_owned(),
            authenticated: true,
            error: None,
        }];
        let remote = self
            .hosts
            .libvirt_uris()?
            .into_iter()
            .map(|uri| async move {
                let (status, transport) = crate::doctor::security::transport(&uri);
                let mut info = HostInfo {
                    host: uri.clone(),
                    reachable: false,
                    vms: 0,
                    free_memory_bytes: None,
                    cpus: None,
                    transport: transport.to_owned(),
                    authenticated: status == crate::doctor::Status::Ok,
                    error: None,
                };
                let answered = async {
                    let host = self.connect(&uri).await?;
                    let vms = host.list().await?.len();
                    let (free, cpus) = host.conn().node_resources().await?;
                    Ok::<_, Error>((vms, free, cpus))
                }
                .await;
                match answered {
                    Ok((vms, free, cpus)) => {
                        info.reachable = true;
                        info.vms = vms;
                        info.free_memory_bytes = Some(free);
                        info.cpus = Some(cpus);
                    }
                    Err(err) => info.error = Some(err.to_string()),
                }
                info
            });
        hosts.extend(join_all(remote).await);
        Ok(hosts)
    }

    /// Every VM: local ones first, then each remembered host's (asked at once).
    pub async fn list(&self) -> Result<Listing> {
        let mut listing = Listing {
            vms: self.kiln.list().await?,
            unreachable: Vec::new(),
        };
        let remote = self
            .hosts
            .libvirt_uris()?
            .into_iter()
            .map(|uri| async move {
                let vms = async { self.connect(&uri).await?.list().await }.await;
                (uri, vms)
            });
        for (uri, vms) in join_all(remote).await {
            match vms {
                Ok(vms) => listing.vms.extend(vms),
                Err(err) => listing.unreachable.push((uri, err)),
            }
        }
        Ok(listing)
    }

    /// Finds a VM: on `uri` when given; otherwise on this machine, then on the remembered
    /// hosts. A name on several hosts is refused: `--connect` says which one.
    pub async fn locate(&self, name: &str, uri: Option<&str>) -> Result<Located> {
        crate::spec::validate_name(name)?;
        if let Some(uri) = uri {
            let host = self.connect(uri).await?;
            return match host.find(name).await? {
                Some(_) => Ok(Located::libvirt(host)),
                None => Err(Error::VmNotFound {
                    name: name.to_owned(),
                }),
            };
        }
        match self.kiln.get(name).await {
            Ok(_) => return Ok(Located::local(&self.kiln)),
            Err(Error::VmNotFound { .. }) => {}
            Err(err) => return Err(err),
        }
        let remote = self
            .hosts
            .libvirt_uris()?
            .into_iter()
            .map(|uri| async move {
                let host = match self.connect(&uri).await {
                    Ok(host) => host,
                    Err(err) => {
                        debug!("skipping {uri} while looking for {name}: {err}");
                        return None;
                    }
                };
                host.find(name).await.ok().flatten().map(|_| host)
            });
        let mut found: Vec<LibvirtHost> = join_all(remote).await.into_iter().flatten().collect();
        match found.len() {
            0 => Err(Error::VmNotFound {
                name: name.to_owned(),
            }),
            1 => Ok(Located::libvirt(found.remove(0))),
            _ => Err(Error::AmbiguousVm {
                name: name.to_owned(),
                hosts: found.iter().map(|h| h.uri().to_owned()).collect(),
            }),
        }
    }

    /// Connects to the agent of a running VM, wherever it is.
    pub async fn agent(&self, name: &str, uri: Option<&str>) -> Result<AgentClient> {
        self.locate(name, uri)
            .await?
            .agent(name, AGENT_TIMEOUT)
            .await
    }

    /// Removes a VM wherever it is, and forgets a libvirt host kiln has no VM left on.
    /// A name found nowhere may still be what an interrupted `up` left: the host it was
    /// meant for (`uri`, or this machine) cleans that up, or says the VM is not found.
    pub async fn remove(
        &self,
        name: &str,
        uri: Option<&str>,
        force: bool,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let located = match self.locate(name, uri).await {
            Ok(located) => located,
            Err(Error::VmNotFound { .. }) => match uri {
                None => Located::local(&self.kiln),
                Some(uri) => Located::libvirt(self.connect(uri).await?),
            },
            Err(err) => return Err(err),
        };
        located.remove(name, force, reporter).await?;
        if let Some(uri) = located.uri()
            && located.list().await?.is_empty()
        {
            self.hosts.forget(uri).await?;
        }
        Ok(())
    }
}

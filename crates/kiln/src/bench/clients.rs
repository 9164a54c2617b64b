//! Many clients on one VM: `exec true` on a connection of its own (as separate `kiln exec`
//! processes make), alone and with many at once.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Stats, spec};
use crate::progress::{Event, NoProgress, Reporter};
use crate::{ExecRequest, Kiln, Result, Vm};

/// What [`clients`] measured: a connection and `exec true` per client, alone and many
/// at once.
#[derive(Debug, Clone, Serialize)]
pub struct ClientsReport {
    /// Clients at once in each concurrent round.
    pub clients: usize,
    /// Connect (lease a port, authenticate) and `exec true`, one client at a time.
    pub single: Stats,
    /// The same, per client, with `clients` of them started together.
    pub concurrent: Stats,
    /// `clients` commands at once over one connection that is already open: what the guest
    /// itself takes to run that many at once, with no connection set up.
    pub one_connection: Stats,
    /// concurrent.p50 / single.p50 (goal ≤ 3).
    pub ratio: f64,
    /// concurrent.p50 / one_connection.p50: what separate connections add.
    pub ratio_to_one_connection: f64,
}

/// One client's whole exchange: its own connection, one command, its output.
async fn one_client(vm: &Vm) -> Result<Duration> {
    let started = Instant::now();
    let agent = vm.agent().await?;
    agent
        .exec(ExecRequest::new(["true"]))
        .await?
        .output()
        .await?;
    Ok(started.elapsed())
}

/// `runs` single clients, then `runs` rounds of `clients` at once.
pub async fn clients(
    kiln: &Kiln,
    clients: usize,
    runs: u32,
    reporter: &dyn Reporter,
) -> Result<ClientsReport> {
    let name = "bench-clients";
    let _ = kiln.remove(name, true, &NoProgress).await;
    let vm = kiln.up(spec(name)?, reporter).await?;
    let result = async {
        let mut single = Vec::new();
        for _ in 0..runs {
            single.push(one_client(&vm).await?);
        }
        let mut concurrent = Vec::new();
        for run in 1..=runs {
            let round = (0..clients).map(|_| one_client(&vm));
            for elapsed in futures_util::future::join_all(round).await {
                concurrent.push(elapsed?);
            }
            reporter.report(Event::Note {
                message: format!("round {run}/{runs}: {clients} clients done"),
            });
        }
        let agent = vm.agent().await?;
        let mut shared = Vec::new();
        for _ in 0..runs {
            let round = (0..clients).map(|_| async {
                let started = Instant::now();
                agent
                    .exec(ExecRequest::new(["true"]))
                    .await?
                    .output()
                    .await?;
                Ok::<_, crate::Error>(started.elapsed())
            });
            for elapsed in futures_util::future::join_all(round).await {
                shared.push(elapsed?);
            }
        }
        let (single, concurrent) = (Stats::of(&single), Stats::of(&concurrent));
        let one_connection = Stats::of(&shared);
        Ok::<_, crate::Error>(ClientsReport {
            clients,
            ratio: concurrent.p50_ms / single.p50_ms.max(f64::EPSILON),
            ratio_to_one_connection: concurrent.p50_ms / one_connection.p50_ms.max(f64::EPSILON),
            single,
            concurrent,
            one_connection,
        })
    }
    .await;
    kiln.remove(name, true, &NoProgress).await?;
    result
}

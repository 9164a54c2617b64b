//! Many clients on one VM at once: one test body, run against every host kind.
//!
//! Each client is a connection of its own, as separate `kiln exec` processes make. The body
//! proves that a second client is served while a first one holds its connection (with a
//! command that never ends on its own, so nothing depends on timing), that sixteen at once
//! all succeed, that a client finding every port taken is told the VM is busy, and that the
//! first client's command was never disturbed.

use std::future::Future;
use std::time::Duration;

use kiln::agent::AgentError;
use kiln::{AgentClient, ExecRequest, ExitStatus};

/// Connects a new client to the VM under test, waiting at most the given time.
pub trait Connect {
    fn connect(&self, timeout: Duration) -> impl Future<Output = kiln::Result<AgentClient>>;
}

impl<F, Fut> Connect for F
where
    F: Fn(Duration) -> Fut,
    Fut: Future<Output = kiln::Result<AgentClient>>,
{
    fn connect(&self, timeout: Duration) -> impl Future<Output = kiln::Result<AgentClient>> {
        self(timeout)
    }
}

const PATIENT: Duration = Duration::from_secs(60);

/// Runs the whole body against one running VM.
pub async fn many_clients_at_once(vm: impl Connect) {
    // The first client starts a command that waits on its stdin: it holds its connection
    // until this test says otherwise.
    let first = vm.connect(PATIENT).await.expect("first client");
    let cat = ExecRequest::new(["cat"]).stdin(true);
    let mut held = first.exec(cat).await.expect("cat starts");
    let mut held_stdin = held.take_stdin().expect("cat's stdin");

    // A second client is served meanwhile, on a connection of its own.
    let second = vm
        .connect(PATIENT)
        .await
        .expect("a second client while one runs");
    let out = second
        .exec(ExecRequest::new(["echo", "second"]))
        .await
        .expect("second exec")
        .output()
        .await
        .expect("second output");
    assert_eq!(out.stdout, b"second\n");
    drop(second);

    // Sixteen more at once, each its own connection: every one succeeds (one of them waits
    // for a free port, since the first client still holds one).
    let jobs: Vec<_> = (0..16)
        .map(|i| {
            let connect = vm.connect(PATIENT);
            async move {
                let agent = connect.await?;
                let out = agent
                    .exec(ExecRequest::new(["echo", &format!("client-{i}")]))
                    .await?
                    .output()
                    .await?;
                Ok::<_, kiln::Error>((i, out))
            }
        })
        .collect();
    for result in futures_util::future::join_all(jobs).await {
        let (i, out) = result.expect("a concurrent client");
        assert_eq!(out.status, ExitStatus::Code(0));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("client-{i}\n")
        );
    }

    // With every port taken, one more client is told the VM is busy: not a wrong secret.
    let mut holders = Vec::new();
    let err = loop {
        match vm.connect(Duration::from_secs(2)).await {
            Ok(agent) => {
                holders.push(agent);
                assert!(holders.len() < 64, "ports never ran out");
            }
            Err(err) => break err,
        }
    };
    assert!(
        matches!(err, kiln::Error::Agent(AgentError::Busy { .. })),
        "expected busy after {} more clients, got {err:?}",
        holders.len()
    );
    assert_eq!(
        holders.len() + 1,
        usize::from(kiln::agent::AGENT_PORTS),
        "every port but the first client's was leased"
    );
    // One leaves, and the next client gets its port.
    holders.pop();
    let again = vm.connect(PATIENT).await.expect("a port was given back");
    drop(again);
    drop(holders);

    // The first client's command ran undisturbed all along.
    held_stdin.write(b"still here\n").await.expect("stdin");
    held_stdin.close().await.expect("close stdin");
    let out = held.output().await.expect("cat's output");
    assert_eq!(out.stdout, b"still here\n");
    assert_eq!(out.status, ExitStatus::Code(0));
}

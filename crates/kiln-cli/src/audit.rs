//! Which commands change state, and what they act on: the audit log's entries
//! ([`kiln::state::audit`]). Only verbs and names are kept, never arguments that may hold
//! secrets (a command's environment or its argv).

use kiln::state::audit::AuditEntry;

use crate::Command;
use crate::commands::{cache, cp, image, net, snapshot};

/// Verbs whose exit code is the guest command's: a non-zero one is not kiln failing.
pub const GUEST_CODE_VERBS: [&str; 3] = ["run", "exec", "console"];

/// The entry for `command`, if it changes state or reaches into a VM.
pub fn entry(command: &Command) -> Option<AuditEntry> {
    let many = |m: &crate::commands::Many| {
        if m.all {
            vec!["--all".to_owned()]
        } else {
            m.names.clone()
        }
    };
    let (verb, targets, host): (&str, Vec<String>, Option<String>) = match command {
        Command::Up(a) => ("up", vec![a.name.clone()], a.connect.clone()),
        Command::Stop(a) => ("stop", many(&a.vms), a.vms.target.connect.clone()),
        Command::Start(a) => ("start", many(&a.vms), a.vms.target.connect.clone()),
        Command::Restart(a) => (
            "restart",
            many(&a.stop.vms),
            a.stop.vms.target.connect.clone(),
        ),
        Command::Rm(a) => ("rm", many(&a.vms), a.vms.target.connect.clone()),
        Command::Pause(a) => ("pause", vec![a.name.clone()], a.target.connect.clone()),
        Command::Resume(a) => ("resume", vec![a.name.clone()], a.target.connect.clone()),
        Command::Clone(a) => (
            "clone",
            vec![a.name.clone(), a.snapshot.clone(), a.new.clone()],
            None,
        ),
        Command::Snapshot(snapshot::Command::Save {
            name,
            snapshot,
            target,
            ..
        }) => (
            "snapshot save",
            vec![name.clone(), snapshot.clone()],
            target.connect.clone(),
        ),
        Command::Snapshot(snapshot::Command::Restore {
            name,
            snapshot,
            target,
        }) => (
            "snapshot restore",
            vec![name.clone(), snapshot.clone()],
            target.connect.clone(),
        ),
        Command::Snapshot(snapshot::Command::Rm {
            name,
            snapshot,
            target,
        }) => (
            "snapshot rm",
            vec![name.clone(), snapshot.clone()],
            target.connect.clone(),
        ),
        Command::Forward(a) if a.forward.is_some() => (
            if a.rm { "forward rm" } else { "forward" },
            vec![a.name.clone()],
            a.target.connect.clone(),
        ),
        Command::Metadata(a) if !a.set.is_empty() || !a.unset.is_empty() => {
            ("metadata", vec![a.name.clone()], a.target.connect.clone())
        }
        Command::Run(_) => ("run", Vec::new(), None),
        // Who ran something in which VM, never what (the argv may hold secrets).
        Command::Exec(a) => ("exec", vec![a.name.clone()], a.target.connect.clone()),
        Command::Console(a) => ("console", vec![a.name.clone()], a.target.connect.clone()),
        Command::Cp(a) => match (&a.src, &a.dest) {
            (_, cp::Location::Guest { vm, .. }) => {
                ("cp to", vec![vm.clone()], a.target.connect.clone())
            }
            (cp::Location::Guest { vm, .. }, _) => {
                ("cp from", vec![vm.clone()], a.target.connect.clone())
            }
            _ => return None,
        },
        Command::Init(_) => ("init", Vec::new(), None),
        Command::Image(image::Command::Build { name, .. }) => {
            ("image build", vec![name.clone()], None)
        }
        Command::Image(image::Command::Rm { name }) => ("image rm", vec![name.clone()], None),
        Command::Net(net::Command::Create { name, .. }) => ("net create", vec![name.clone()], None),
        Command::Net(net::Command::Rm { name, .. }) => ("net rm", vec![name.clone()], None),
        Command::Cache(cache::Command::Prune) => ("cache prune", Vec::new(), None),
        _ => return None,
    };
    Some(AuditEntry::new(verb, targets, host))
}

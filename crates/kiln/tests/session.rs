//! Sessions on a real VM: the workspace goes in, the command's changes come back by the
//! documented rules, and the VM is gone afterwards.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use kiln::progress::NoProgress;
use kiln::session::Session;
use kiln::{ExecRequest, ExitStatus, VmSpec};
use kiln_testkit::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_returns_created_and_changed_files_and_leaves_no_vm() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    std::fs::create_dir(root.join("src")).unwrap();
    std::fs::write(root.join("src/lib.txt"), "v1\n").unwrap();
    std::fs::write(root.join("both.txt"), "base\n").unwrap();
    std::fs::write(root.join("old.txt"), "old\n").unwrap();
    std::fs::write(root.join("same.txt"), "same\n").unwrap();
    std::fs::write(root.join("scratch.txt"), "temporary\n").unwrap();

    let spec = VmSpec::builder("sess").memory_mib(384).build().unwrap();
    let mut session = Session::new(kiln.clone(), spec, Some(root.to_owned()));
    session.ensure_ready(&NoProgress).await.unwrap();
    session.ensure_ready(&NoProgress).await.unwrap(); // a second call changes nothing

    // Incremental push: only what changed on the host since the first push goes over.
    std::fs::write(root.join("src/new.txt"), "added\n").unwrap();
    std::fs::remove_file(root.join("scratch.txt")).unwrap();
    let pushed = session.push_changes(&NoProgress).await.unwrap();
    assert_eq!(pushed.created, ["src/new.txt"]);
    assert!(pushed.changed.is_empty(), "{pushed:?}");
    assert_eq!(pushed.deleted, ["scratch.txt"]);
    assert_eq!(pushed.bytes, 6);
    let out = session
        .run(ExecRequest::new([
            "sh",
            "-c",
            "cat src/new.txt; test -e scratch.txt || echo gone",
        ]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"added\ngone\n");
    std::fs::remove_file(root.join("src/new.txt")).unwrap();
    session.push_changes(&NoProgress).await.unwrap();

    let script = "cat src/lib.txt same.txt >/dev/null && echo v2 >> src/lib.txt \
                  && mkdir -p out && echo built > out/result.txt \
                  && echo guest >> both.txt && rm old.txt && pwd && exit 4";
    let out = session
        .run(ExecRequest::new(["sh", "-c", script]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(4), "{out:?}");
    assert_eq!(out.stdout, b"/workspace\n");

    // The host changes a file the guest changed too, while the session runs.
    std::fs::write(root.join("both.txt"), "host edit, longer\n").unwrap();

    let report = session.pull_changes(&NoProgress).await.unwrap();
    assert_eq!(report.created, ["out/result.txt"]);
    assert_eq!(report.changed, ["src/lib.txt"]);
    assert_eq!(report.conflicts, ["both.txt"]);
    assert_eq!(report.deleted, ["old.txt"]);

    assert_eq!(
        std::fs::read_to_string(root.join("src/lib.txt")).unwrap(),
        "v1\nv2\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("out/result.txt")).unwrap(),
        "built\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("both.txt")).unwrap(),
        "host edit, longer\n",
        "the host's edit is kept"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("both.txt.kiln-guest")).unwrap(),
        "base\nguest\n"
    );
    assert!(
        root.join("old.txt").exists(),
        "deletions are not applied on the host"
    );
    // Nothing else was left in the workspace (no staging directory).
    let mut names: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "both.txt",
            "both.txt.kiln-guest",
            "old.txt",
            "out",
            "same.txt",
            "src"
        ]
    );

    session.shutdown(&NoProgress).await.unwrap();
    assert!(kiln.list().await.unwrap().is_empty());
}

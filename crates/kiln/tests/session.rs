//! Sessions on a real VM: the workspace goes in, the command's changes come back by the
//! documented rules, and the VM is gone afterwards.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use kiln::progress::{NoProgress, Stage};
use kiln::session::Session;
use kiln::{ExecRequest, ExitStatus, VmSpec};
use kiln_testkit::TestEnv;
use kiln_testkit::events::Recorder;

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

    let pulling = Recorder::default();
    let report = session.pull_changes(&pulling).await.unwrap();
    let (received, expected) = pulling.last_bytes(Stage::PullChanges, 1);
    assert!(
        received > 0 && expected.is_some(),
        "{received} of {expected:?}"
    );
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
    kiln.forget_workspace_image(root);
}

/// Runs `script` in the session's workspace; its stdout, once it exited with 0.
async fn run(session: &Session, script: &str) -> String {
    let request = ExecRequest::new(["sh", "-c", script]);
    let out = session.run(request).await.unwrap().output().await.unwrap();
    assert_eq!(out.status, ExitStatus::Code(0), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file of a tree, with its bytes (symlinks as their targets).
fn tree(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.push((name, target.as_os_str().as_encoded_bytes().to_vec()));
            } else {
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Warm sessions get their workspace as a drive made on the host: each clone of one template
/// mounts its own (never the template's or another session's), with modes and symlinks as on
/// the host; a guest that overwrites its drive harms nothing on the host, and no image is
/// left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_sessions_mount_their_own_workspace_drive_and_a_wrecked_drive_harms_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let warm = env.kiln().with_warm_starts(true);
    let spec = |name: &str| VmSpec::builder(name).memory_mib(256).build().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::create_dir(a.path().join("bin")).unwrap();
    std::fs::write(a.path().join("bin/tool"), "#!/bin/sh\necho tool ran\n").unwrap();
    std::fs::set_permissions(
        a.path().join("bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/hostname", a.path().join("outside")).unwrap();
    std::fs::write(b.path().join("only-b.txt"), "b\n").unwrap();

    let mut first = Session::new(warm.clone(), spec("ws-a"), Some(a.path().to_owned()));
    first.ensure_ready(&NoProgress).await.unwrap();
    assert_eq!(
        run(&first, "bin/tool; readlink outside; ls").await,
        "tool ran\n/etc/hostname\nbin\nlost+found\noutside\n"
    );
    // The session's first VM made the template: the template's drive stayed blank, and the
    // second session, a clone of it, mounts its own workspace.
    let mut second = Session::new(warm.clone(), spec("ws-b"), Some(b.path().to_owned()));
    second.ensure_ready(&NoProgress).await.unwrap();
    assert_eq!(
        run(&second, "ls; cat only-b.txt").await,
        "lost+found\nonly-b.txt\nb\n"
    );

    // The guest wrecks its drive under the mounted workspace.
    let before = tree(b.path());
    let wreck = "for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = kiln-workspace ] && \
                 dev=/dev/${d##*/}; done; dd if=/dev/urandom of=$dev bs=1M count=4 \
                 conv=notrunc 2>/dev/null; sync; echo 3 > /proc/sys/vm/drop_caches; echo done";
    assert_eq!(run(&second, wreck).await, "done\n");
    let _ = second.pull_changes(&NoProgress).await;
    assert_eq!(tree(b.path()), before, "the host's workspace changed");

    for session in [first, second] {
        session.shutdown(&NoProgress).await.unwrap();
    }
    let images = env.home().join("data/workspaces");
    let left: Vec<_> = std::fs::read_dir(&images).unwrap().collect();
    assert!(left.is_empty(), "workspace images left: {left:?}");
    warm.forget_workspace_image(a.path());
    warm.forget_workspace_image(b.path());
}

/// A later session on the same directory starts from the image the first one wrote and
/// receives only what changed on the host since: the changed file, the new one, and the
/// deletion; the image it starts from is never written by a guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_session_receives_only_what_changed_since_the_last_one() {
    let env = TestEnv::new();
    let warm = env.kiln().with_warm_starts(true);
    let spec = |name: &str| VmSpec::builder(name).memory_mib(256).build().unwrap();
    let ws = tempfile::tempdir().unwrap();
    for i in 0..50 {
        std::fs::write(ws.path().join(format!("f{i:02}.txt")), format!("{i}\n")).unwrap();
    }
    std::fs::write(ws.path().join("kind"), "a file\n").unwrap();
    let mut first = Session::new(warm.clone(), spec("later-1"), Some(ws.path().to_owned()));
    first.ensure_ready(&NoProgress).await.unwrap();
    assert!(
        first.first_push().unwrap().is_empty(),
        "a new image holds it all"
    );
    // The guest writes into its workspace: the cached image must not see it.
    run(&first, "echo guest > f00.txt; echo junk > guest-only.txt").await;
    first.shutdown(&NoProgress).await.unwrap();

    std::fs::write(ws.path().join("f01.txt"), "changed on the host\n").unwrap();
    std::fs::write(ws.path().join("new.txt"), "new\n").unwrap();
    std::fs::remove_file(ws.path().join("f02.txt")).unwrap();
    // A file that became a directory.
    std::fs::remove_file(ws.path().join("kind")).unwrap();
    std::fs::create_dir(ws.path().join("kind")).unwrap();
    std::fs::write(ws.path().join("kind/inner.txt"), "inside\n").unwrap();
    let mut second = Session::new(warm.clone(), spec("later-2"), Some(ws.path().to_owned()));
    let starting = Recorder::default();
    second.ensure_ready(&starting).await.unwrap();
    // Three files of a few bytes: three headers and three blocks of contents, and the end.
    let sent = starting.last_bytes(Stage::PushWorkspace, 1);
    assert_eq!(sent, (3 * 1024 + 1024, Some(3 * 1024 + 1024)));
    let pushed = second.first_push().unwrap();
    assert_eq!(pushed.created, ["kind/inner.txt", "new.txt"]);
    assert_eq!(pushed.changed, ["f01.txt"]);
    assert_eq!(pushed.deleted, ["f02.txt", "kind"]);
    assert_eq!(
        run(
            &second,
            "cat f00.txt f01.txt new.txt kind/inner.txt; test -e f02.txt || echo f02 gone; \
             test -e guest-only.txt || echo no junk; ls | wc -l"
        )
        .await,
        "0\nchanged on the host\nnew\ninside\nf02 gone\nno junk\n52\n"
    );
    second.shutdown(&NoProgress).await.unwrap();
    warm.forget_workspace_image(ws.path());
}

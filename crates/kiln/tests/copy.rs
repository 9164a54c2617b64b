//! `kiln cp` through a real guest: a tree with modes and a symlink, and a file over 100 MiB,
//! both ways, compared byte for byte (checksums on both sides).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kiln::copy::{self, CopyError, CopyLimits};
use kiln::progress::{NoProgress, Stage};
use kiln::{Error, ExecRequest, VmSpec};
use kiln_testkit::TestEnv;
use kiln_testkit::events::Recorder;
use sha2::{Digest, Sha256};

fn sha256(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_and_big_files_round_trip_byte_identical() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    // The guest's root is in RAM: room for two copies of the big file.
    let spec = VmSpec::builder("cp").memory_mib(640).build().unwrap();
    let vm = kiln.up(spec, &NoProgress).await.unwrap();
    let agent = vm.agent().await.unwrap();
    let work = tempfile::tempdir().unwrap();

    // A tree: modes, a nested directory, a symlink, an empty file.
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("readme"), "hello\n").unwrap();
    std::fs::write(tree.join("bin/run"), "#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(tree.join("bin/run"), PermissionsExt::from_mode(0o750)).unwrap();
    std::fs::write(tree.join("empty"), "").unwrap();
    std::os::unix::fs::symlink("readme", tree.join("link")).unwrap();

    let stats = copy::push(&agent, &tree, "/root", &NoProgress)
        .await
        .unwrap();
    assert_eq!((stats.files, stats.bytes), (3, 25));
    // One host connection per VM at a time: everything goes through `agent`.
    let run = |argv: &'static [&'static str]| {
        let agent = agent.clone();
        async move {
            agent
                .exec(ExecRequest::new(argv.iter().copied()))
                .await
                .unwrap()
                .output()
                .await
                .unwrap()
        }
    };
    let out = run(&[
        "sh",
        "-c",
        "cd /root/tree && /root/tree/bin/run && stat -c '%a %n' bin/run && readlink link",
    ])
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "run\n750 bin/run\nreadme\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Back to the host under a new name (the destination does not exist yet).
    let back = work.path().join("back");
    copy::pull(
        &agent,
        "/root/tree",
        &back,
        &CopyLimits::default(),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(back.join("readme")).unwrap(), b"hello\n");
    assert_eq!(mode(&back.join("bin/run")), 0o750);
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap(),
        Path::new("readme")
    );
    assert_eq!(std::fs::read(back.join("empty")).unwrap(), b"");

    // Over 100 MiB, random bytes, both ways.
    let big = work.path().join("big.bin");
    {
        let mut file = std::fs::File::create(&big).unwrap();
        let mut block = vec![0u8; 1 << 20];
        for i in 0..101u32 {
            getrandom::fill(&mut block).unwrap();
            block[0..4].copy_from_slice(&i.to_le_bytes());
            file.write_all(&block).unwrap();
        }
    }
    let host_sum = sha256(&big);
    let pushed = Recorder::default();
    copy::push(&agent, &big, "/tmp/big-in-guest", &pushed)
        .await
        .unwrap();
    // The bar's total is the tar stream (a header, the contents, the end), and it is met.
    let tar = 512 + (101 << 20) + 1024;
    assert!(pushed.finished(Stage::Copy));
    assert_eq!(pushed.last_bytes(Stage::Copy, 2), (tar, Some(tar)));
    let out = run(&["sha256sum", "/tmp/big-in-guest"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&host_sum),
        "guest checksum differs: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let returned_dir = work.path().join("returned");
    std::fs::create_dir(&returned_dir).unwrap();
    let pulled = Recorder::default();
    let stats = copy::pull(
        &agent,
        "/tmp/big-in-guest",
        &returned_dir,
        &CopyLimits::default(),
        &pulled,
    )
    .await
    .unwrap();
    assert_eq!(stats.bytes, 101 << 20);
    // A pull's size is not known beforehand: bytes without a total.
    let (received, total) = pulled.last_bytes(Stage::Copy, 2);
    assert!(
        received > 101 << 20 && total.is_none(),
        "{received} {total:?}"
    );
    assert_eq!(sha256(&returned_dir.join("big-in-guest")), host_sum);

    // Missing paths on either side are typed errors.
    let err = copy::pull(
        &agent,
        "/no/such/file",
        work.path(),
        &CopyLimits::default(),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Copy(CopyError::GuestPathMissing { .. })),
        "{err}"
    );
    let err = copy::push(&agent, &tree, "/no/such/dir/x", &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Copy(CopyError::GuestPathMissing { .. })),
        "{err}"
    );
    let err = copy::push(&agent, &work.path().join("absent"), "/root", &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err}");

    drop(agent);
    kiln.remove("cp", true, &NoProgress).await.unwrap();
}

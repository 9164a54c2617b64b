//! The `kiln` binary as a user runs it: messages and exit codes.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{KILN, run, stderr, stdout};
use kiln_testkit::{TestEnv, remote_libvirt_uri, require_libvirtd_remote, unique_name};

#[test]
fn help_lists_the_commands() {
    let env = TestEnv::new();
    let out = run(&env, &["--help"]);
    assert!(out.status.success());
    for command in [
        "up", "ls", "exec", "cp", "logs", "stop", "start", "rm", "doctor", "image", "bench",
    ] {
        assert!(stdout(&out).contains(command), "help lacks {command}");
    }
}

#[test]
fn unknown_command_is_a_usage_error() {
    let env = TestEnv::new();
    let out = run(&env, &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unrecognized subcommand"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn invalid_names_and_sizes_are_usage_errors_with_a_hint() {
    let env = TestEnv::new();
    for name in ["Web", "a/b", "..", "has space", &"x".repeat(64)] {
        let out = run(&env, &["up", name]);
        assert_eq!(out.status.code(), Some(2), "name {name:?}");
        assert!(stderr(&out).contains("invalid VM name"), "{}", stderr(&out));
        assert!(stderr(&out).contains("hint:"), "{}", stderr(&out));
    }
    for size in ["0x", "-1G", "1PB"] {
        let out = run(&env, &["up", "ok", "--memory", size]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "size {size:?}: {}",
            stderr(&out)
        );
    }
    for (flag, value) in [
        ("-p", "0:80"),
        ("-p", "70000:80"),
        ("-p", "80:80/sctp"),
        ("-v", "/only-host"),
    ] {
        let out = run(&env, &["up", "ok", flag, value]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flag} {value}: {}",
            stderr(&out)
        );
    }
    let out = run(&env, &["up", "ok", "-v", "/no/such/dir:/data"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
    assert!(stderr(&out).contains("hint:"), "{}", stderr(&out));
    // Nothing was created by any of these.
    assert!(!env.home().join("data/vms").exists());
}

#[test]
fn zero_cpus_and_tiny_memory_are_refused_with_a_hint() {
    let env = TestEnv::new();
    let out = run(&env, &["up", "small", "--memory", "32M"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("error: 32 MiB of memory is below"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("hint:"));
    let out = run(&env, &["up", "small", "--cpus", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("at least 1 vCPU"), "{}", stderr(&out));
}

#[test]
fn missing_vm_says_so_and_how_to_list() {
    let env = TestEnv::new();
    for args in [
        &["exec", "ghost", "--", "true"][..],
        &["stop", "ghost"],
        &["rm", "ghost"],
    ] {
        let out = run(&env, args);
        // kiln's own failure in `exec` is 125, as in docker, so a guest's exit 1 stays its own.
        let code = if args[0] == "exec" { 125 } else { 1 };
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert!(
            stderr(&out).contains("error: VM ghost not found"),
            "{}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("hint: `kiln ls`"), "{}", stderr(&out));
    }
    let out = run(&env, &["ls", "--json"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), "[]");
}

#[test]
fn doctor_reports_acceleration_with_its_reason() {
    let env = TestEnv::new();
    let out = run(&env, &["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let accel = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "acceleration")
        .unwrap();
    let detail = accel["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("kvm") || detail.starts_with("tcg"),
        "{detail}"
    );

    // A config file kiln cannot read is a failed check, naming the file and the field.
    let config = env.home().join("config.toml");
    std::fs::write(&config, "cpus = \"many\"\n").unwrap();
    let out = env
        .cli(KILN)
        .env("KILN_CONFIG", &config)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = &report["checks"][0];
    assert_eq!(
        (&check["name"], &check["status"]),
        (&"config".into(), &"fail".into())
    );
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("config.toml is not valid") && detail.contains("u32"),
        "{detail}"
    );
}

/// One real VM through the CLI: up, ls, exec, a duplicate up, an exec on a stopped VM, rm.
#[test]
fn lifecycle_through_the_cli() {
    let env = TestEnv::new();
    let out = run(&env, &["up", "cli-vm", "--memory", "256M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("accel"),
        "up must say which accelerator: {}",
        stderr(&out)
    );

    let out = run(
        &env,
        &[
            "exec",
            "cli-vm",
            "--",
            "sh",
            "-c",
            "echo hi; echo oops >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "hi\n");
    assert_eq!(stderr(&out), "oops\n");

    // cp both ways: into an existing directory, and back under a new name.
    let file = env.home().join("note.txt");
    std::fs::write(&file, "from the host\n").unwrap();
    let out = run(&env, &["cp", file.to_str().unwrap(), "cli-vm:/root"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let back = env.home().join("back.txt");
    let out = run(
        &env,
        &["cp", "cli-vm:/root/note.txt", back.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "from the host\n");
    let out = run(&env, &["cp", "cli-vm:/nope", back.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nope does not exist in the guest"),
        "{}",
        stderr(&out)
    );
    let out = run(&env, &["cp", "a", "b"]);
    assert_eq!(out.status.code(), Some(2));

    let out = run(&env, &["exec", "cli-vm", "--", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));

    let out = run(&env, &["up", "cli-vm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("error: VM cli-vm already exists"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("hint:"));

    let out = run(&env, &["ls", "--json"]);
    let vms: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(vms[0]["name"], "cli-vm");
    assert_eq!(vms[0]["state"], "running");

    let out = run(&env, &["stop", "cli-vm"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&env, &["exec", "cli-vm", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("is stopped; exec needs it running"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("hint: start it with `kiln start cli-vm`"));

    let out = run(&env, &["logs", "cli-vm"]);
    assert!(
        stdout(&out).contains("kiln-init: starting agent"),
        "{}",
        stdout(&out)
    );

    let out = run(&env, &["rm", "cli-vm"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&env, &["ls", "--json"]);
    assert_eq!(stdout(&out).trim(), "[]");
}

#[test]
fn color_is_asked_for_or_left_out() {
    let env = TestEnv::new();
    let out = run(&env, &["--color", "always", "rm", "ghost"]);
    assert!(
        stderr(&out).contains("\x1b[1;31merror:\x1b[0m VM ghost not found"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("\x1b[1;36mhint:\x1b[0m"),
        "{}",
        stderr(&out)
    );
    for args in [&["rm", "ghost"][..], &["--color", "never", "rm", "ghost"]] {
        let out = env
            .cli(KILN)
            .env("NO_COLOR", "1")
            .args(args)
            .output()
            .unwrap();
        assert!(!stderr(&out).contains('\x1b'), "{}", stderr(&out));
        assert!(
            stderr(&out).starts_with("error: VM ghost not found"),
            "{}",
            stderr(&out)
        );
    }
    // A first run writes a config file (once) and has the default image ready.
    let config = env.home().join("cfg/kiln/config.toml");
    let init = || {
        env.cli(KILN)
            .env("KILN_CONFIG", &config)
            .arg("init")
            .output()
            .unwrap()
    };
    let out = init();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("(written)"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("image: default ready"),
        "{}",
        stdout(&out)
    );
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("# cpus = 1")
    );
    assert!(stdout(&init()).contains("(kept)"));
    // No libvirt host used yet: `kiln hosts` shows this machine alone.
    let out = run(&env, &["hosts", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hosts[0]["host"], "local", "{hosts}");
    assert_eq!(hosts.as_array().unwrap().len(), 1, "{hosts}");
    // The environment kiln reads is in its help.
    let out = run(&env, &["--help"]);
    for var in ["KILN_HOME", "KILN_LIBVIRT_URI", "NO_COLOR"] {
        assert!(stdout(&out).contains(var), "{var}: {}", stdout(&out));
    }
}

#[test]
fn security_status_names_every_item_and_flags_an_unauthenticated_transport() {
    let env = TestEnv::new();
    let out = run(&env, &["security", "status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let items: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    for name in [
        "acceleration",
        "agent authentication",
        "state and sockets",
        "guest network",
        "libvirt transport",
        "qemu sandbox",
        "console",
    ] {
        assert!(names.contains(&name), "{name} missing: {names:?}");
    }
    let out = run(
        &env,
        &[
            "security",
            "status",
            "--connect",
            "qemu+tcp://127.0.0.1/system",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("FAIL  libvirt transport    qemu+tcp://127.0.0.1/system: plain TCP"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_same_definitions() {
    let env = TestEnv::new();
    for (shell, marker) in [
        ("bash", "_kiln()"),
        ("zsh", "#compdef kiln"),
        ("fish", "complete -c kiln"),
    ] {
        let out = run(&env, &["completion", shell]);
        assert!(out.status.success(), "{}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("metadata"),
            "{shell} completes every command"
        );
    }
    let out = run(&env, &["man"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(".ie"), "{}", stdout(&out));
    assert!(stdout(&out).contains(".TH kiln"), "{}", stdout(&out));
    let out = run(&env, &["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Verbs on several VMs at once, `--all`, `restart`, `stop --force` and `logs --tail`.
#[test]
fn several_vms_at_once_restart_force_and_tail() {
    let env = TestEnv::new();
    let out = run(&env, &["up", "many-1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["name"], "many-1");
    assert_eq!(made["state"], "running");
    // The config file's defaults, over kiln's; the environment over the file.
    let config = env.home().join("config.toml");
    std::fs::write(&config, "cpus = 2\nmemory = \"384M\"\n").unwrap();
    let with_config = |args: &[&str]| {
        env.cli(KILN)
            .env("KILN_CONFIG", &config)
            .env("KILN_CPUS", "")
            .args(args)
            .output()
            .unwrap()
    };
    let out = with_config(&["up", "many-2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: serde_json::Value =
        serde_json::from_slice(&with_config(&["inspect", "many-2", "--json"]).stdout).unwrap();
    assert_eq!(shown["cpus"], 2, "{shown}");
    assert_eq!(shown["memory_mib"], 384, "{shown}");
    let out = env
        .cli(KILN)
        .env("KILN_CONFIG", &config)
        .env("KILN_CPUS", "3")
        .args(["config", "show", "--json"])
        .output()
        .unwrap();
    let effective: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(effective["cpus"]["value"], 3, "{effective}");
    assert_eq!(
        effective["cpus"]["source"]["name"], "KILN_CPUS",
        "{effective}"
    );
    assert_eq!(effective["memory"]["source"]["kind"], "file", "{effective}");
    assert_eq!(
        effective["image"]["source"]["kind"], "default",
        "{effective}"
    );
    // A config kiln cannot read refuses, naming it, before anything is made.
    std::fs::write(&config, "cpus = \"many\"\n").unwrap();
    let out = with_config(&["up", "many-3"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("config.toml is not valid"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("kiln config show"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(&config).unwrap();
    let out = run(&env, &["forward", "many-1", "--json"]);
    assert_eq!(stdout(&out).trim(), "[]", "{}", stderr(&out));
    let state = |name: &str| {
        let out = run(&env, &["ls", "--json"]);
        let vms: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        vms.as_array()
            .unwrap()
            .iter()
            .find(|vm| vm["name"] == name)
            .map(|vm| vm["state"].as_str().unwrap().to_owned())
    };

    let out = run(&env, &["inspect", "many-1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected["name"], "many-1");
    assert_eq!(inspected["state"], "running");
    assert_eq!(inspected["spec"]["name"], "many-1");
    assert_eq!(inspected["spec"]["cpus"], 1);
    assert!(
        inspected["id"].as_str().is_some_and(|id| id.len() == 36),
        "{inspected}"
    );
    let out = run(&env, &["inspect", "many-1"]);
    assert!(stdout(&out).contains("state: running"), "{}", stdout(&out));

    let all = stdout(&run(&env, &["logs", "many-1"]));
    let out = run(&env, &["logs", "many-1", "--tail", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let last_two: Vec<&str> = all.lines().rev().take(2).collect();
    let tail = stdout(&out);
    let tail: Vec<&str> = tail.lines().rev().collect();
    assert_eq!(tail, last_two);

    let out = run(&env, &["restart", "many-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "many-1 is running\n");
    assert!(stderr(&out).contains("done      stop"), "{}", stderr(&out));
    // -q: the results, not the progress.
    let out = run(&env, &["restart", "-q", "many-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "many-1 is running\n");
    assert_eq!(stderr(&out), "");
    let out = run(&env, &["exec", "many-1", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The guest's exit code is not kiln failing: the audit log says ok.
    let out = run(&env, &["exec", "many-1", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    let out = run(&env, &["stop", "--force", "many-1", "many-2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state("many-1").as_deref(), Some("stopped"));
    assert_eq!(state("many-2").as_deref(), Some("stopped"));
    let out = run(&env, &["start", "many-1", "many-2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state("many-2").as_deref(), Some("running"));
    let out = run(&env, &["snapshot", "save", "many-2", "s1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let saved: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(saved["name"], "s1", "{saved}");

    // One name that does not exist: the others are still stopped, and the exit code says so.
    let out = run(&env, &["stop", "--timeout", "5", "ghost", "many-1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: VM ghost not found"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "many-1 is stopped\n");

    let out = run(&env, &["rm"]);
    assert_eq!(out.status.code(), Some(2), "names or --all are needed");
    let out = run(&env, &["rm", "--all", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&run(&env, &["ls", "--json"])).trim(), "[]");

    // Every state-changing command is one line of the audit log, failures too, and so is
    // every command run in a VM (without its argv); nothing else (ls, logs, inspect) is.
    let log = std::fs::read_to_string(env.home().join("data/state/audit.log")).unwrap();
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let verbs: Vec<&str> = entries
        .iter()
        .map(|e| e["verb"].as_str().unwrap())
        .collect();
    assert_eq!(
        verbs,
        [
            "up",
            "up",
            "up",
            "restart",
            "restart",
            "exec",
            "exec",
            "stop",
            "start",
            "snapshot save",
            "stop",
            "rm"
        ],
        "{log}"
    );
    assert_eq!(entries[2]["result"], "error", "{log}");
    assert_eq!(entries[6]["targets"], serde_json::json!(["many-1"]));
    assert_eq!(entries[6]["result"], "ok", "{log}");
    assert!(!log.contains("exit 3"), "no argv in the log: {log}");
    assert_eq!(
        entries[7]["targets"],
        serde_json::json!(["many-1", "many-2"])
    );
    assert_eq!(entries[10]["result"], "error", "{log}");
    assert_eq!(
        entries[10]["targets"],
        serde_json::json!(["ghost", "many-1"])
    );
    assert_eq!(entries[11]["targets"], serde_json::json!(["--all"]));
    assert!(
        entries
            .iter()
            .all(|e| e["uid"].is_u64() && e["time"].is_u64())
    );

    let out = run(&env, &["cache", "info", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let usage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(usage["images"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["total"].as_u64().unwrap() >= usage["images"].as_u64().unwrap());
    let out = run(&env, &["cache", "info"]);
    assert!(stdout(&out).contains("templates"), "{}", stdout(&out));
}

/// Removes a libvirt VM whatever happens in the test.
struct RemoveOnDrop<'a> {
    env: &'a TestEnv,
    name: String,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = run(
            self.env,
            &[
                "rm",
                "--force",
                &self.name,
                "--connect",
                &remote_libvirt_uri(),
            ],
        );
    }
}

/// The same verbs on a libvirt host reached as a remote one: `up --connect`, then `ls`,
/// `exec`, `logs`, `stop`, `start` and `rm` find the VM without being told the URI again.
#[test]
fn libvirt_lifecycle_through_the_cli() {
    require_libvirtd_remote();
    let env = TestEnv::new();
    let name = unique_name("cli-lv");
    let _cleanup = RemoveOnDrop {
        env: &env,
        name: name.clone(),
    };
    let out = run(
        &env,
        &[
            "up",
            &name,
            "--memory",
            "256M",
            "--connect",
            &remote_libvirt_uri(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&remote_libvirt_uri()),
        "{}",
        stdout(&out)
    );

    let out = run(&env, &["ls", "--json"]);
    let vms: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vm = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|vm| vm["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not listed: {vms}"));
    assert_eq!(vm["host"], remote_libvirt_uri().as_str());
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["memory_mib"], 256);

    let out = run(
        &env,
        &[
            "exec",
            &name,
            "--",
            "sh",
            "-c",
            "hostname; echo oops >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{name}\n"));
    assert_eq!(stderr(&out), "oops\n");

    let out = run(&env, &["up", &name, "--connect", &remote_libvirt_uri()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    let out = run(&env, &["logs", &name]);
    assert!(
        stdout(&out).contains("kiln-init: starting agent"),
        "{}",
        stdout(&out)
    );

    // Snapshot verbs find the VM there too; without a disk it cannot hold one.
    let out = run(&env, &["snapshot", "save", &name, "s1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("hint: create the VM with a disk"),
        "{}",
        stderr(&out)
    );
    let out = run(&env, &["snapshot", "ls", &name, "--json"]);
    assert_eq!(stdout(&out).trim(), "[]", "{}", stderr(&out));

    let out = run(&env, &["rm", &name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("rm needs it stopped"),
        "{}",
        stderr(&out)
    );

    let out = run(&env, &["stop", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&env, &["exec", &name, "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    // The same refusal as for a stopped VM on this machine.
    assert!(
        stderr(&out).contains("is stopped; exec needs it running"),
        "{}",
        stderr(&out)
    );

    let out = run(&env, &["start", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&env, &["exec", &name, "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = run(&env, &["rm", "--force", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&env, &["ls", "--json"]);
    let vms: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !vms.to_string().contains(&name),
        "{name} still listed: {vms}"
    );
}

/// The score benchmark runs end to end and reports a no-op re-apply for each run (the goal
/// itself is checked by people reading the bench, not by a timed test).
#[test]
fn score_bench_reports_noop_reapplies() {
    let env = TestEnv::new();
    let out = run(
        &env,
        &["bench", "score", "--vms", "3", "--runs", "2", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["vms"], 3);
    assert_eq!(report["noop_apply"]["samples"], 2);
    assert!(report["noop_apply"]["p50_ms"].as_f64().unwrap() > 0.0);
}

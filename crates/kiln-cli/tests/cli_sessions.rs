//! The `kiln` binary as a user runs it, for the commands that take a terminal or a whole
//! session: `kiln run`, interrupts, `console`, named networks, and the benches' reports.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::Output;

use common::{KILN, run, stderr, stdout};
use kiln_testkit::{TestEnv, unique_name};

/// `kiln run`: the command's exit code, a file it creates comes back, the VM is gone.
#[test]
fn run_returns_files_and_the_exit_code_and_removes_the_vm() {
    let env = TestEnv::new();
    let ws = env.home().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("in.txt"), "input\n").unwrap();
    let out = run(
        &env,
        &[
            "run",
            "--memory",
            "384M",
            "--workspace",
            ws.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "tr a-z A-Z < in.txt > out.txt; echo done; exit 9",
        ],
    );
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert_eq!(stdout(&out), "done\n");
    assert_eq!(
        std::fs::read_to_string(ws.join("out.txt")).unwrap(),
        "INPUT\n"
    );
    let out = run(&env, &["ls", "--json"]);
    assert_eq!(stdout(&out).trim(), "[]");

    // --json: the command's output goes to stderr, stdout is the session's report.
    std::fs::write(ws.join("in.txt"), "changed on the host\n").unwrap();
    let out = run(
        &env,
        &[
            "run",
            "--json",
            "--memory",
            "384M",
            "-w",
            ws.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo to-stdout; echo new > new.txt; exit 4",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("to-stdout"), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["exit_code"], 4, "{report}");
    assert_eq!(
        report["pulled"]["created"],
        serde_json::json!(["new.txt"]),
        "{report}"
    );
    let stages = report["timings"].as_array().unwrap();
    assert_eq!(stages.last().unwrap()["stage"], "total", "{report}");
    assert!(
        stages.iter().all(|s| s["ms"].as_f64().unwrap() >= 0.0),
        "{report}"
    );
}

/// Ctrl-C on `kiln run` leaves no VM and no QEMU process: once during boot, and once in the
/// middle of the command.
#[test]
fn run_interrupted_leaves_no_vm_and_no_qemu() {
    use std::io::BufRead;
    let env = TestEnv::new();
    let interrupt = |child: &std::process::Child| {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(child),
            rustix::process::Signal::INT,
        )
        .unwrap();
    };
    // During boot: as soon as the VM shows up.
    let mut child = env
        .cli(KILN)
        .args(["run", "--memory", "256M", "--", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !stdout(&run(&env, &["ls", "--json"])).contains("\"name\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "the session VM never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    interrupt(&child);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_no_vm_and_no_qemu(&env);

    // In the middle of the command: once it has printed.
    let mut child = env
        .cli(KILN)
        .args([
            "run",
            "--memory",
            "256M",
            "--",
            "sh",
            "-c",
            "echo started; sleep 600",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");
    interrupt(&child);
    // The guest's sleep dies of the forwarded SIGINT: 128 + 2.
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_no_vm_and_no_qemu(&env);
}

#[test]
fn a_second_ctrl_c_always_ends_exec() {
    use std::io::BufRead;
    let env = TestEnv::new();
    let out = run(&env, &["up", "intr", "--memory", "256M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A guest command that ignores SIGINT: the first Ctrl-C reaches it and changes nothing.
    let mut child = env
        .cli(KILN)
        .args([
            "exec",
            "intr",
            "--",
            "sh",
            "-c",
            "trap '' INT; echo started; sleep 600",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");
    let pid = rustix::process::Pid::from_child(&child);
    let interrupt = || {
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    };
    interrupt();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "one Ctrl-C is the guest's to handle"
    );
    interrupt();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a second Ctrl-C did not end kiln exec"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    let out = run(&env, &["rm", "--force", "intr"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn assert_no_vm_and_no_qemu(env: &TestEnv) {
    let out = run(env, &["ls", "--json"]);
    assert_eq!(stdout(&out).trim(), "[]");
    let home = env.home().to_str().unwrap().to_owned();
    let qemus = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.unwrap().path().join("cmdline")).ok())
        .filter(|cmdline| String::from_utf8_lossy(cmdline).contains(&home))
        .count();
    assert_eq!(qemus, 0, "a QEMU of this test still runs");
}

/// `kiln console` on a real terminal (a pty the test owns): a command runs, and Ctrl-]
/// detaches with exit code 0 and the terminal restored.
#[test]
fn console_runs_a_shell_and_detaches_on_ctrl_bracket() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::io::{Read, Write};
    let env = TestEnv::new();
    let out = run(&env, &["up", "con", "--memory", "256M"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let controller = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&controller).unwrap();
    unlockpt(&controller).unwrap();
    let path = ptsname(&controller, Vec::new()).unwrap();
    let terminal = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path.to_str().unwrap())
            .unwrap()
    };
    // Held open for the whole test: with no terminal side open, reading the controller
    // fails, and the reader below would stop between the two consoles.
    let _held = terminal();
    let before = rustix::termios::tcgetattr(terminal()).unwrap();
    let mut child = env
        .cli(KILN)
        .args(["console", "con"])
        .stdin(terminal())
        .stdout(terminal())
        .stderr(terminal())
        .spawn()
        .unwrap();
    let mut controller = std::fs::File::from(controller);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut reader = controller.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let read_until = |marker: &str| {
        let mut seen = String::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !seen.contains(marker) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(data) => seen.push_str(&String::from_utf8_lossy(&data)),
                Err(_) => panic!("no {marker:?} on the console; saw {seen:?}"),
            }
        }
        seen
    };
    read_until("Detach with Ctrl-]");
    // Computed by the shell, so the echo of the typed line never matches.
    controller
        .write_all(b"echo c-$((6*7))-$(hostname)\r")
        .unwrap();
    let seen = read_until("c-42-con");
    assert!(!seen.contains("error"), "{seen:?}");
    // One console per VM at a time: a second is refused at once, with a hint.
    let out = run(&env, &["console", "con"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("VM con already has a console open"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("hint:"), "{}", stderr(&out));
    controller.write_all(&[0x1d]).unwrap();
    read_until("[detached]");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    // Detached, it is free again; left idle, it detaches by itself.
    let mut child = env
        .cli(KILN)
        .args(["console", "con", "--idle-timeout", "3"])
        .stdin(terminal())
        .stdout(terminal())
        .stderr(terminal())
        .spawn()
        .unwrap();
    read_until("[detached: idle for 3s]");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    // The terminal is back in the mode it had.
    let after = rustix::termios::tcgetattr(terminal()).unwrap();
    assert_eq!(after.local_modes, before.local_modes);

    let out = run(&env, &["rm", "--force", "con"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Runs network-changing commands in a namespace of the test's own, so the host is untouched.
struct NetNs(String);

impl NetNs {
    fn new() -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "prerequisite missing: root (named networks create bridges in a network namespace)"
        );
        let name = unique_name("kiln-t");
        let status = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("prerequisite missing: iproute2's `ip` (scripts/setup.sh installs it)");
        assert!(status.success(), "ip netns add {name} failed");
        Self(name)
    }

    /// `kiln ARGS` inside the namespace.
    fn kiln(&self, env: &TestEnv, args: &[&str]) -> Output {
        let mut command = env.cli("ip");
        command.args(["netns", "exec", &self.0, KILN]).args(args);
        command.output().unwrap()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Two VMs on a named network of the daemonless backend reach each other and the host's
/// bridge; the network refuses removal while in use, and nothing is left afterwards.
#[test]
fn two_vms_on_a_named_network_exchange_a_ping() {
    let env = TestEnv::new();
    let ns = NetNs::new();
    let out = ns.kiln(&env, &["net", "create", "lab", "--subnet", "10.91.0.0/24"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for vm in ["na", "nb"] {
        let out = ns.kiln(&env, &["up", vm, "--memory", "192M", "--network", "lab"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = ns.kiln(&env, &["net", "ls", "--json"]);
    let networks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(networks[0]["leases"]["na"], "10.91.0.2", "{networks}");
    assert_eq!(networks[0]["leases"]["nb"], "10.91.0.3", "{networks}");

    // VM to VM, VM to the host's end of the bridge, and outbound NAT still on eth0.
    let out = run(
        &env,
        &[
            "exec",
            "na",
            "--",
            "sh",
            "-c",
            "ping -c 2 -W 5 10.91.0.3 && ping -c 1 -W 5 10.91.0.1 && ip route",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("2 packets received"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("default via 10.0.2.2"),
        "{}",
        stdout(&out)
    );

    let out = ns.kiln(&env, &["net", "rm", "lab"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is used by na, nb"),
        "{}",
        stderr(&out)
    );
    for vm in ["na", "nb"] {
        let out = ns.kiln(&env, &["rm", "--force", vm]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = ns.kiln(&env, &["net", "rm", "lab"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // No bridge and no tap left in the namespace.
    let links = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0, "ip", "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains(": kb") && !links.contains(": kt"),
        "{links}"
    );
}

/// The session benchmark runs end to end: sessions, boots, warm sessions on a workspace, and
/// an incremental push.
#[test]
fn session_bench_reports_its_figures() {
    let env = TestEnv::new();
    let out = run(
        &env,
        &["bench", "session", "--runs", "1", "--files", "60", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files"], 60);
    assert_eq!(report["run_true"]["samples"], 1);
    assert_eq!(report["workspace_bytes"], 600_000);
    assert_eq!(report["workspace_run_true"]["samples"], 1);
    assert!(report["image_first_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["image_later"]["samples"], 1);
    assert!(
        report["push_incremental_ms"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    let out = run(&env, &["ls", "--json"]);
    assert_eq!(stdout(&out).trim(), "[]", "the bench left a VM");
}

/// The snapshot benchmark runs end to end and leaves no VM.
#[test]
fn snapshot_bench_reports_its_figures() {
    let env = TestEnv::new();
    let out = run(&env, &["bench", "snapshot", "--runs", "1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["restore"]["samples"], 1);
    assert!(report["save_bytes"].as_u64().unwrap() > 1 << 20, "{report}");
    let out = run(&env, &["ls", "--json"]);
    assert_eq!(stdout(&out).trim(), "[]", "the bench left a VM");
}

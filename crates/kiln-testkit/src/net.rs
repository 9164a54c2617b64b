//! Probing what a guest's network reaches: a service on the host, and a shell script the guest
//! runs to try each address. The same body for every backend.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};

/// What the host's service answers with.
pub const BANNER: &str = "kiln-host-service";

/// Answers every connection with [`BANNER`], on `addr` (port chosen by the kernel); returns
/// the port.
pub fn host_service(addr: Ipv4Addr) -> u16 {
    let listener = TcpListener::bind((addr, 0))
        .unwrap_or_else(|e| panic!("cannot listen on {addr} for the probe: {e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(format!("{BANNER}\n").as_bytes());
        }
    });
    port
}

/// The host's address on its default route (no packet is sent).
pub fn host_address() -> Ipv4Addr {
    let found = UdpSocket::bind("0.0.0.0:0").and_then(|socket| {
        socket
            .connect("192.0.2.1:9")
            .or_else(|_| socket.connect("10.255.255.1:9"))?;
        socket.local_addr()
    });
    match found.map(|a| a.ip()) {
        Ok(IpAddr::V4(ip)) if !ip.is_loopback() && !ip.is_unspecified() => ip,
        other => panic!(
            "prerequisite missing: a non-loopback IPv4 address on a route of this host ({other:?})"
        ),
    }
}

/// A script that tries `port` at each target and prints `TARGET=` and what came back.
/// stdin stays open a moment: the passt in Debian 12 does not pass on a server's FIN once
/// the guest has half-closed first (docs/security.md).
pub fn probe_script(port: u16, targets: &[String]) -> String {
    targets
        .iter()
        .map(|t| format!("echo \"{t}=$(sleep 1 | timeout 8 nc -w 3 {t} {port} 2>/dev/null)\""))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Which targets answered with the banner, from the script's output.
pub fn probe_results(stdout: &[u8], targets: &[String]) -> Vec<(String, bool)> {
    let text = String::from_utf8_lossy(stdout);
    targets
        .iter()
        .map(|t| {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{t}=")))
                .unwrap_or_else(|| panic!("no answer for {t} in {text:?}"));
            (t.clone(), line.contains(BANNER))
        })
        .collect()
}

//! A reconnect storm, as users run it with `rudder bench xds --restart`: 2,000 simulated
//! proxies hold their config from a `rudder discovery` process, which is SIGKILLed and started
//! again on the same port; every proxy reconnects with Envoy's jittered backoff and gets its
//! whole config again. The time it takes is a benchmark figure (BENCHMARKS.md), not asserted.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rudder_e2e::process::{Proc, free_ports};

const RUDDER: &str = env!("CARGO_BIN_EXE_rudder");
const PROXIES: usize = 2_000;

fn wait_until_serving(monitoring: u16, discovery: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        discovery.check_running().unwrap();
        // Version 1 is the empty snapshot; 2 is the mesh loaded.
        let adsz = Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{monitoring}/debug/adsz")]).output();
        let loaded = adsz.ok().and_then(|o| {
            let body: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            Some(body["push_version"].as_u64()? >= 2)
        });
        if loaded == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "discovery did not load the mesh in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_thousand_proxies_resync_after_discovery_is_killed_and_restarted() {
    let dir = std::env::temp_dir().join(format!("rudder-restart-storm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mesh = dir.join("mesh");
    let out = Command::new(RUDDER)
        .args(["bench", "mesh", "--services", "10", "--ports", "1", "--endpoints", "3", "--out"])
        .arg(&mesh)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let [grpc, monitoring] = free_ports().unwrap();
    let log = dir.join("discovery.log");
    let args: Vec<String> = [
        "discovery",
        "--config-dir",
        &mesh.display().to_string(),
        "--no-webhook",
        "--grpc-address",
        &format!("127.0.0.1:{grpc}"),
        "--monitoring-address",
        &format!("127.0.0.1:{monitoring}"),
    ]
    .map(str::to_owned)
    .to_vec();
    let mut discovery = Proc::spawn("discovery", Path::new(RUDDER), &args, Some(&log)).unwrap();
    wait_until_serving(monitoring, &mut discovery);

    // The bench kills this process, starts the same command line again, and stops that one
    // when it ends.
    let out = Command::new(RUDDER)
        .args(["bench", "xds", "--routes", "8080", "--settle", "0.5", "--timeout", "180", "--restart"])
        .args(["--address", &format!("127.0.0.1:{grpc}")])
        .args(["--proxies", &PROXIES.to_string(), "--pid", &discovery.pid().to_string()])
        .output()
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    let discovery_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(out.status.success(), "bench failed: {report}\ndiscovery log:\n{discovery_log}");
    assert!(report.contains(&format!("full config: {PROXIES}/{PROXIES} streams")), "{report}");
    assert!(
        report.contains(&format!("restart (SIGKILL, then the same command line): {PROXIES}/{PROXIES} streams")),
        "{report}\ndiscovery log:\n{discovery_log}"
    );
    // Two processes served: the log holds two starts, and the restarted one is gone (the
    // bench stopped it) so nothing outlives the test.
    assert_eq!(discovery_log.matches("discovery serving").count(), 2, "{discovery_log}");
    let listening = std::net::TcpStream::connect(("127.0.0.1", grpc));
    assert!(listening.is_err(), "the restarted discovery still runs after the bench");
    let _ = std::fs::remove_dir_all(&dir);
}

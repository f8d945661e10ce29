//! Structured logs of a long-running role, as an operator of Rudder reads them: `rudder
//! discovery --log-format json` writes one JSON object per line, and the filter changes at run
//! time through `/logging` on the monitoring port.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rudder_e2e::process::{Proc, free_ports};

fn curl(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("curl").args(["-s", "--max-time", "2"]).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn json_logs_and_a_filter_changed_at_run_time() {
    let dir = std::env::temp_dir().join(format!("rudder-logging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let [grpc, secure, monitoring] = free_ports().unwrap();
    let log = dir.join("discovery.log");
    let args: Vec<String> = [
        "discovery",
        "--config-dir",
        &dir.join("config").display().to_string(),
        "--grpc-address",
        &format!("127.0.0.1:{grpc}"),
        "--secure-grpc-address",
        &format!("127.0.0.1:{secure}"),
        "--monitoring-address",
        &format!("127.0.0.1:{monitoring}"),
        "--no-webhook",
        "--log-format",
        "json",
        "--log-level",
        "info",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut discovery =
        Proc::spawn("discovery", std::path::Path::new(env!("CARGO_BIN_EXE_rudder")), &args, Some(&log)).unwrap();
    let base = format!("http://127.0.0.1:{monitoring}");
    wait_for("discovery ready", || curl(&[&format!("{base}/ready")]));

    let lines = std::fs::read_to_string(&log).unwrap();
    let first = lines.lines().find(|l| l.contains("discovery serving")).unwrap_or_else(|| panic!("{lines}"));
    let json: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{first}: {e}"));
    assert_eq!(json["level"], "INFO", "{json}");
    assert!(json["timestamp"].is_string() && json["fields"]["message"].is_string(), "{json}");

    assert_eq!(curl(&[&format!("{base}/logging")]).unwrap().trim(), "info");
    let set = curl(&["-X", "PUT", &format!("{base}/logging?level=debug")]).unwrap();
    assert_eq!(set.trim(), "debug");
    assert_eq!(curl(&[&format!("{base}/logging")]).unwrap().trim(), "debug");
    // Debug lines appear once the filter says so (a config directory rescan logs at debug).
    std::fs::write(
        dir.join("config/mesh.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata: {mesh: \"{}\"}\n",
    )
    .unwrap();
    wait_for("a DEBUG line after the change", || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines().any(|l| l.contains("\"level\":\"DEBUG\"")).then_some(())
    });
    let bad = std::process::Command::new("curl")
        .args(["-s", "-g", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", &format!("{base}/logging?level=[[[")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&bad.stdout), "400");
    discovery.stop(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

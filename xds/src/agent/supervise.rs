//! Running Envoy under the agent: write the bootstrap to a file, start Envoy on it, and stay
//! its parent until the end. On a shutdown signal the agent drains first (admin
//! `POST /drain_listeners?graceful`, then `termination_drain` of waiting), then asks Envoy to
//! stop with SIGTERM, and SIGKILLs it if it is still there after `kill_grace`. If Envoy exits
//! on its own, the agent reports how.
//!
//! Signals: the workspace denies `unsafe`, so there is no `kill(2)`; tokio's
//! `Child::start_kill` only sends SIGKILL. SIGTERM is therefore sent by running the system
//! `kill -TERM <pid>` command. Envoy runs in its own process group so that a terminal's Ctrl-C
//! reaches only the agent, which then drains instead of Envoy dying mid-request.
//!
//! Also here: [`local_request`], the tiny HTTP/1.1 client the agent uses for Envoy's admin
//! endpoint and that `rudder proxy wait` / `rudder proxy request` use.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How Envoy is started and stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvoyOptions {
    /// The binary; see [`resolve_envoy`].
    pub envoy_path: PathBuf,
    /// Where the bootstrap goes; `None` means a fresh directory under the system temp dir,
    /// removed again when the agent ends.
    pub config_dir: Option<PathBuf>,
    /// `--base-id` (shared-memory namespace); lets several Envoys share a host.
    pub base_id: u32,
    /// `--drain-time-s`: how long listeners drain on updates and on shutdown.
    pub drain_duration: Duration,
    /// Worker threads; 0 means one per core.
    pub concurrency: u32,
    /// `-l`.
    pub log_level: String,
    /// `--component-log-level`, e.g. `misc:error`; empty means none.
    pub component_log_level: String,
    /// Time between the graceful drain request and SIGTERM.
    pub termination_drain: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Extra environment for Envoy (what its config reads with `%ENVIRONMENT(..)%`).
    pub env: Vec<(String, String)>,
}

impl EnvoyOptions {
    /// Istio's defaults for a given binary.
    pub fn new(envoy_path: PathBuf) -> Self {
        Self {
            envoy_path,
            config_dir: None,
            base_id: 0,
            drain_duration: Duration::from_secs(45),
            concurrency: 2,
            log_level: "warning".to_owned(),
            component_log_level: "misc:error".to_owned(),
            termination_drain: Duration::from_secs(5),
            kill_grace: Duration::from_secs(5),
            env: Vec::new(),
        }
    }

    /// Envoy's command line for a bootstrap file. Hot restart is off (the agent never
    /// restarts Envoy in place), so `--parent-shutdown-time-s` has nothing to act on and is
    /// left out.
    pub fn args(&self, bootstrap_file: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-c".into(), bootstrap_file.into()];
        let mut flag = |name: &str, value: String| {
            args.push(name.into());
            args.push(value.into());
        };
        flag("--base-id", self.base_id.to_string());
        flag("--drain-time-s", self.drain_duration.as_secs().max(1).to_string());
        flag("--drain-strategy", "immediate".to_owned());
        flag("--concurrency", self.concurrency.to_string());
        flag("-l", self.log_level.clone());
        if !self.component_log_level.is_empty() {
            flag("--component-log-level", self.component_log_level.clone());
        }
        args.push("--disable-hot-restart".into());
        args
    }
}

/// Why supervision ended badly.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("writing the bootstrap to {0}: {1}")]
    WriteBootstrap(PathBuf, io::Error),
    #[error("starting Envoy {0}: {1}")]
    Start(PathBuf, io::Error),
    #[error("waiting for Envoy: {0}")]
    Wait(io::Error),
    #[error("Envoy exited unexpectedly ({0})")]
    EnvoyDied(ExitStatus),
}

/// How the supervised Envoy ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// We asked it to stop and it did, with this status.
    Stopped(ExitStatus),
    /// It exited by itself with status 0 (e.g. `POST /quitquitquit`, as Jobs do).
    ExitedCleanly,
}

/// The Envoy binary: the explicit path if given (callers fill it from `--envoy-path` or
/// `ENVOY_PATH`), else `envoy` on `PATH`.
pub fn resolve_envoy(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(format!("Envoy binary {} not found", path.display()))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("envoy"))
        .find(|p| p.is_file())
        .ok_or_else(|| "Envoy not found: pass --envoy-path, set ENVOY_PATH, or put envoy on PATH".to_owned())
}

/// Writes `bootstrap` and runs Envoy on it until `shutdown` resolves (then drains and stops
/// it) or Envoy exits by itself. `admin` is Envoy's admin endpoint (`host:port`), used for the
/// drain. `on_start` gets Envoy's pid once it runs.
pub async fn supervise(
    bootstrap: &Value,
    options: &EnvoyOptions,
    admin: &str,
    shutdown: impl Future<Output = ()>,
    on_start: impl FnOnce(u32),
) -> Result<Ending, SuperviseError> {
    let (dir, temporary) = match &options.config_dir {
        Some(dir) => (dir.clone(), false),
        None if is_writable_dir(Path::new(POD_CONFIG_DIR)) => (PathBuf::from(POD_CONFIG_DIR), false),
        None => (std::env::temp_dir().join(format!("rudder-proxy-{}", std::process::id())), true),
    };
    let result = run_in(&dir, bootstrap, options, admin, shutdown, on_start).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// The directory a pod gives the proxy for its files (Istio's `istio-envoy` emptyDir): the root
/// filesystem of an injected or gateway pod is read-only, so the temp dir cannot be used there.
pub const POD_CONFIG_DIR: &str = "/etc/istio/proxy";

fn is_writable_dir(dir: &Path) -> bool {
    let probe = dir.join(format!(".rudder-probe-{}", std::process::id()));
    let writable = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    writable
}

async fn run_in(
    dir: &Path,
    bootstrap: &Value,
    options: &EnvoyOptions,
    admin: &str,
    shutdown: impl Future<Output = ()>,
    on_start: impl FnOnce(u32),
) -> Result<Ending, SuperviseError> {
    let file = dir.join("envoy-rev.json");
    let text =
        serde_json::to_vec_pretty(bootstrap).map_err(|e| SuperviseError::WriteBootstrap(file.clone(), e.into()))?;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&file, text))
        .map_err(|e| SuperviseError::WriteBootstrap(file.clone(), e))?;

    let mut child = Command::new(&options.envoy_path)
        .args(options.args(&file))
        .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SuperviseError::Start(options.envoy_path.clone(), e))?;
    if let Some(pid) = child.id() {
        on_start(pid);
    }

    tokio::select! {
        status = child.wait() => {
            let status = status.map_err(SuperviseError::Wait)?;
            if status.success() { Ok(Ending::ExitedCleanly) } else { Err(SuperviseError::EnvoyDied(status)) }
        }
        () = shutdown => stop(&mut child, options, admin).await.map(Ending::Stopped),
    }
}

/// Drain, then SIGTERM, then SIGKILL; each step ends early once Envoy is gone.
async fn stop(child: &mut Child, options: &EnvoyOptions, admin: &str) -> Result<ExitStatus, SuperviseError> {
    tracing::info!("draining Envoy listeners for {:?}", options.termination_drain);
    if let Err(e) = local_request(admin, "POST", "/drain_listeners?graceful", Duration::from_secs(2)).await {
        tracing::warn!("drain request to Envoy admin {admin} failed: {e}");
    }
    if let Ok(status) = tokio::time::timeout(options.termination_drain, child.wait()).await {
        return status.map_err(SuperviseError::Wait);
    }
    if let Some(pid) = child.id()
        && let Err(e) = send_sigterm(pid).await
    {
        tracing::warn!("SIGTERM to Envoy (pid {pid}) failed: {e}");
    }
    if let Ok(status) = tokio::time::timeout(options.kill_grace, child.wait()).await {
        return status.map_err(SuperviseError::Wait);
    }
    tracing::warn!("Envoy still running {:?} after SIGTERM; killing it", options.kill_grace);
    let _ = child.start_kill();
    child.wait().await.map_err(SuperviseError::Wait)
}

/// SIGTERM through the `kill` command (see the module doc for why not a syscall).
async fn send_sigterm(pid: u32) -> io::Result<()> {
    let kill = ["/bin/kill", "/usr/bin/kill"].into_iter().find(|p| Path::new(p).is_file()).unwrap_or("kill");
    let status = Command::new(kill).args(["-TERM", &pid.to_string()]).stdin(Stdio::null()).status().await?;
    if status.success() { Ok(()) } else { Err(io::Error::other(format!("{kill} -TERM {pid}: {status}"))) }
}

/// The process exit code that mirrors Envoy's: its code, or 128 + signal if a signal ended it.
pub fn exit_code_of(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + (signal & 0x7f)).unwrap_or(1),
        (None, None) => 1,
    }
}

/// A response from [`local_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub body: String,
}

/// One plain HTTP/1.1 request to a local endpoint (`authority` = `host:port`), answer read to
/// the end (`Connection: close`), chunked bodies decoded. Enough for Envoy's admin and the
/// readiness listener; not a general client.
pub async fn local_request(authority: &str, method: &str, path: &str, timeout: Duration) -> io::Result<LocalResponse> {
    request_with_host(authority, authority, method, path, timeout).await
}

/// [`local_request`] to `authority` with another `Host` header (a service name sent to a
/// proxy's listener).
pub async fn request_with_host(
    authority: &str,
    host: &str,
    method: &str,
    path: &str,
    timeout: Duration,
) -> io::Result<LocalResponse> {
    let exchange = async {
        let mut stream = TcpStream::connect(authority).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rudder-proxy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_response(&raw)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        io::Error::new(io::ErrorKind::TimedOut, format!("no answer from {authority} within {timeout:?}"))
    })?
}

fn parse_response(raw: &[u8]) -> io::Result<LocalResponse> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad HTTP response: {why}"));
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked { dechunk(body).ok_or_else(|| bad("broken chunked body"))? } else { body.to_vec() };
    Ok(LocalResponse { status, body: String::from_utf8_lossy(&body).into_owned() })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn envoy_command_line() {
        let options = EnvoyOptions { base_id: 7, concurrency: 1, ..EnvoyOptions::new("/x/envoy".into()) };
        let args: Vec<String> =
            options.args(Path::new("/tmp/b.json")).into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            args.join(" "),
            "-c /tmp/b.json --base-id 7 --drain-time-s 45 --drain-strategy immediate --concurrency 1 -l warning \
             --component-log-level misc:error --disable-hot-restart"
        );
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = parse_response(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 17\r\n\r\nPRE_INITIALIZING\n")
            .unwrap();
        assert_eq!(plain, LocalResponse { status: 503, body: "PRE_INITIALIZING\n".into() });
        let chunked = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nLIVE\r\n1;x=y\r\n\n\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked, LocalResponse { status: 200, body: "LIVE\n".into() });
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }

    #[test]
    fn exit_codes_mirror_envoy() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code_of(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code_of(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code_of(ExitStatus::from_raw(9)), 137);
    }

    #[test]
    fn explicit_envoy_path_must_exist() {
        assert!(resolve_envoy(Some(Path::new("/nonexistent/envoy"))).unwrap_err().contains("not found"));
    }
}

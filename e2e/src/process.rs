//! Child processes that never outlive their owner: each runs in its own process group, and
//! dropping the guard terminates the whole group (the agent and the Envoy it started).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running process group, terminated on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Starts `program args…` in a new process group, its stdout and stderr appended to
    /// `log` (or inherited when `None`).
    pub fn spawn(name: &str, program: &Path, args: &[String], log: Option<&Path>) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).process_group(0);
        if let Some(log) = log {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        let child = cmd.spawn().map_err(|e| anyhow::anyhow!("starting {name} ({}): {e}", program.display()))?;
        Ok(Self { name: name.to_owned(), child })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (a process that exited is an error with its
    /// status, so callers can fail fast instead of timing out).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => anyhow::bail!("{} exited: {status}", self.name),
        }
    }

    /// SIGKILLs the group at once (a crash, as the kernel's OOM killer or a node loss would
    /// end it) and reaps the leader.
    pub fn kill(&mut self) {
        signal_group(self.child.id(), "KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM to the group and waits up to `grace`, then SIGKILLs it.
    pub fn stop(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            signal_group(self.child.id(), "KILL");
            return;
        }
        signal_group(self.child.id(), "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                // The leader is gone; make sure nothing of its group lingers.
                signal_group(self.child.id(), "KILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(self.child.id(), "KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// `kill -<signal> -- -<pgid>` (unsafe code is forbidden in this workspace, so no libc).
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), "--".into(), format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `N` distinct TCP ports free on 127.0.0.1 now. All are held until every one is chosen, so
/// two picks cannot return the same port, as separate picks can when the processes bind their
/// ports only later.
///
/// They are drawn at random below the kernel's ephemeral range: the processes that bind them
/// may start tens of seconds later (a cluster's components start one after another), and
/// meanwhile a port of that range can become the source port of any outgoing connection on the
/// machine. A CI run lost kube-proxy's healthz port so ("address already in use").
pub fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    use std::hash::BuildHasher;
    const FLOOR: u16 = 10_000;
    let ceiling = ephemeral_range_start().unwrap_or(32_768).max(FLOOR + 1_000);
    let random = std::collections::hash_map::RandomState::new();
    let mut held: Vec<(u16, std::net::TcpListener)> = Vec::with_capacity(N);
    for attempt in 0u32.. {
        if held.len() == N {
            break;
        }
        if attempt > 10_000 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("no {N} free ports on 127.0.0.1 in {FLOOR}..{ceiling}"),
            ));
        }
        let port = FLOOR + (random.hash_one(attempt) % u64::from(ceiling - FLOOR)) as u16;
        if held.iter().any(|(taken, _)| *taken == port) {
            continue;
        }
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push((port, listener));
        }
    }
    let mut ports = [0u16; N];
    for (port, (chosen, _)) in ports.iter_mut().zip(&held) {
        *port = *chosen;
    }
    Ok(ports)
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_range_start() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// How a running process was started, read from `/proc/<pid>`: enough to start it again.
#[derive(Clone, Debug)]
pub struct Launch {
    /// `argv`, program first (as invoked: a multi-call binary dispatches on it).
    pub command_line: Vec<String>,
    /// `NAME=value` entries.
    pub environment: Vec<String>,
    pub cwd: std::path::PathBuf,
    /// The regular file its stdout went to, if any.
    pub log: Option<std::path::PathBuf>,
}

impl Launch {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        use anyhow::Context;
        let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
        let nul_separated = |file: &str| -> anyhow::Result<Vec<String>> {
            let bytes = std::fs::read(dir.join(file)).with_context(|| format!("reading /proc/{pid}/{file}"))?;
            // NUL-terminated entries: the last terminator is not an empty entry.
            let bytes = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
            Ok(bytes.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned()).collect())
        };
        Ok(Self {
            command_line: nul_separated("cmdline")?,
            environment: nul_separated("environ")?,
            cwd: std::fs::read_link(dir.join("cwd")).with_context(|| format!("reading /proc/{pid}/cwd"))?,
            log: std::fs::read_link(dir.join("fd/1")).ok().filter(|p| p.is_file()),
        })
    }

    /// A command that starts the process again: same program, arguments, environment and
    /// working directory, output appended to its log.
    pub fn command(&self) -> anyhow::Result<Command> {
        let (program, args) = self.command_line.split_first().ok_or_else(|| anyhow::anyhow!("empty command line"))?;
        let mut command = Command::new(program);
        command.args(args).current_dir(&self.cwd).env_clear().stdin(Stdio::null());
        command.envs(self.environment.iter().filter_map(|kv| kv.split_once('=')));
        if let Some(log) = &self.log {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
            command.stdout(file.try_clone()?).stderr(file);
        }
        Ok(command)
    }
}

/// SIGKILLs process `pid` (not necessarily a child) and waits until it is gone, or a zombie with
/// no thread left: its sockets are closed then. (The main thread turns zombie before the others
/// have exited, and they hold the listening socket.)
pub fn kill_and_wait(pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -KILL {pid}: {status}");
    let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let threads = || std::fs::read_dir(dir.join("task")).map(|d| d.count()).unwrap_or(0);
    let running = |status: &str| !(status.contains("State:\tZ") && threads() <= 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(dir.join("status")).is_ok_and(|s| running(&s)) {
        anyhow::ensure!(Instant::now() < deadline, "process {pid} still alive 10 s after SIGKILL");
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct, free and outside the ephemeral range, so no outgoing connection takes one
    /// before the process that binds it starts.
    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let start = ephemeral_range_start().unwrap_or(32_768);
        for _ in 0..20 {
            let ports: [u16; 9] = free_ports().unwrap();
            let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
            assert_eq!(distinct.len(), ports.len(), "{ports:?}");
            for port in ports {
                assert!((10_000..start).contains(&port), "{port} is outside 10000..{start}");
                std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            }
        }
    }
}

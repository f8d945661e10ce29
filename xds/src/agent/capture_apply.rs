//! Applies the capture rules of [`super::capture`] in the current network namespace (the init
//! container's job): every program needed is found before any runs, the rule text is checked
//! with `--test`, then `iptables-restore --noflush` (and `ip6tables-restore`) and the TPROXY
//! routes run. The I/O beside the pure rules; `rudder proxy init` calls it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::capture::{CaptureConfig, CaptureRules};

/// Why the rules could not be applied; every message names the command.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{name} not found on PATH: {why}")]
    Missing { name: &'static str, why: &'static str },
    #[error("running `{command}`: {source}")]
    Run { command: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {detail}")]
    Failed { command: String, status: std::process::ExitStatus, detail: String },
}

/// Applies `rules`: nothing runs unless every program is there, and no rule is applied unless
/// the whole text passes `--test`.
pub fn apply(rules: &CaptureRules) -> Result<(), ApplyError> {
    let v4 = program("iptables-restore", "iptables (nft) is needed to set up traffic capture")?;
    let v6 = match rules.ipv6 {
        Some(_) => Some(program("ip6tables-restore", "IPv6 capture needs ip6tables")?),
        None => None,
    };
    let ip = if rules.routes.is_empty() {
        None
    } else {
        Some(program("ip", "TPROXY mode needs the `ip` command (iproute2) for its policy route")?)
    };
    let restores: Vec<(&PathBuf, &str)> =
        [Some((&v4, rules.ipv4.as_str())), v6.as_ref().zip(rules.ipv6.as_deref())].into_iter().flatten().collect();
    for (program, text) in &restores {
        run_with_input(program, &["--test", "--noflush"], text)?;
    }
    for (program, text) in &restores {
        run_with_input(program, &["--noflush"], text)?;
    }
    if let Some(ip) = ip {
        for route in &rules.routes {
            let args: Vec<&str> = route.iter().map(String::as_str).collect();
            run_with_input(&ip, &args, "")?;
        }
    }
    Ok(())
}

/// What `--dry-run` prints: the rule texts under the commands that would take them, and the
/// TPROXY routes as comments.
pub fn dry_run_text(config: &CaptureConfig, rules: &CaptureRules) -> String {
    if rules.is_empty() {
        return "# interception mode NONE: no rules\n".to_owned();
    }
    let dns = if config.redirect_dns { "on" } else { "off" };
    let mut out = format!("# DNS capture {dns}\n# iptables-restore --noflush\n{}", rules.ipv4);
    if let Some(v6) = &rules.ipv6 {
        out.push_str(&format!("# ip6tables-restore --noflush\n{v6}"));
    }
    for route in &rules.routes {
        out.push_str(&format!("# ip {}\n", route.join(" ")));
    }
    out
}

/// Whether this network namespace has a global-scope IPv6 address (`/proc/net/if_inet6`,
/// scope column `00`).
pub fn has_global_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6")
        .is_ok_and(|table| table.lines().any(|line| line.split_whitespace().nth(3) == Some("00")))
}

/// `name` on PATH, or an error saying why it is needed.
fn program(name: &'static str, why: &'static str) -> Result<PathBuf, ApplyError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(ApplyError::Missing { name, why })
}

fn run_with_input(program: &PathBuf, args: &[&str], input: &str) -> Result<(), ApplyError> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let run = |source| ApplyError::Run { command: command.clone(), source };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(run)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(run)?;
    }
    let output = child.wait_with_output().map_err(run)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let detail = [stderr.trim(), stdout.trim()].into_iter().find(|s| !s.is_empty()).unwrap_or("no output");
        return Err(ApplyError::Failed { command, status: output.status, detail: detail.to_owned() });
    }
    Ok(())
}

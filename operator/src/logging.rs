//! Logs of the long-running roles (discovery, webhook, operator): text or JSON lines on stderr
//! (`--log-format`), filtered by `--log-level` (an `EnvFilter` directive such as `debug` or
//! `info,rudder_xds=debug`; else `RUST_LOG`; else `info` with kube's and tower's chatter
//! quieted), and changeable while running: `GET /logging` on the role's monitoring port says the
//! filter in force, `PUT /logging?level=<filter>` replaces it.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// The filter when neither `--log-level` nor `RUST_LOG` says one.
pub const DEFAULT_FILTER: &str = "info,kube=warn,tower=warn";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// The logging flags every long-running role takes.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "RUDDER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `info,rudder_xds=debug`, …); default `RUST_LOG`, else info.
    #[arg(long, env = "RUDDER_LOG_LEVEL")]
    pub log_level: Option<String>,
}

struct Handle {
    reload: reload::Handle<EnvFilter, Registry>,
    current: std::sync::Mutex<String>,
}

static HANDLE: OnceLock<Handle> = OnceLock::new();

/// Installs the process's logger (once; later calls keep the first).
pub fn init(args: &LogArgs) {
    let text = args
        .log_level
        .clone()
        .filter(|l| !l.trim().is_empty())
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|l| !l.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_FILTER.to_owned());
    let filter = EnvFilter::try_new(&text).unwrap_or_else(|error| {
        eprintln!("warning: log filter {text:?} not understood ({error}); using {DEFAULT_FILTER}");
        EnvFilter::new(DEFAULT_FILTER)
    });
    let (filter, reload) = reload::Layer::new(filter);
    let output = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    if tracing_subscriber::registry().with(filter).with(output).try_init().is_ok() {
        let _ = HANDLE.set(Handle { reload, current: std::sync::Mutex::new(text) });
    }
}

/// The filter in force (`None` before [`init`]).
pub fn level() -> Option<String> {
    HANDLE.get().map(|h| h.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
}

/// Replaces the filter in force.
pub fn set_level(text: &str) -> Result<(), String> {
    let handle = HANDLE.get().ok_or("logging is not initialised")?;
    let filter = EnvFilter::try_new(text).map_err(|e| format!("log filter {text:?}: {e}"))?;
    handle.reload.reload(filter).map_err(|e| e.to_string())?;
    *handle.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = text.to_owned();
    tracing::info!(filter = text, "log filter changed");
    Ok(())
}

/// `/logging` for a role's monitoring port: `(status, body)` for `method` and the query string.
pub fn handle(method: &str, query: Option<&str>) -> (u16, String) {
    match method {
        "GET" => match level() {
            Some(level) => (200, format!("{level}\n")),
            None => (503, "logging is not initialised\n".into()),
        },
        "PUT" | "POST" => {
            let wanted = query
                .unwrap_or_default()
                .split('&')
                .find_map(|pair| pair.strip_prefix("level="))
                .map(|v| v.replace("%2C", ",").replace("%2c", ",").replace("%3D", "=").replace("%3d", "="));
            match wanted {
                Some(level) if !level.is_empty() => match set_level(&level) {
                    Ok(()) => (200, format!("{level}\n")),
                    Err(error) => (400, format!("{error}\n")),
                },
                _ => (400, "PUT /logging?level=<filter>\n".into()),
            }
        }
        _ => (405, "GET or PUT\n".into()),
    }
}

/// `/logging` as an axum route.
pub fn router() -> axum::Router {
    use axum::extract::RawQuery;
    use axum::http::{Method, StatusCode};
    axum::Router::new().route(
        "/logging",
        axum::routing::any(|method: Method, RawQuery(query): RawQuery| async move {
            let (status, body) = handle(method.as_str(), query.as_deref());
            (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body)
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_changes_at_run_time() {
        init(&LogArgs { log_format: LogFormat::Json, log_level: Some("warn".into()) });
        assert_eq!(handle("GET", None), (200, "warn\n".to_owned()));
        assert_eq!(handle("PUT", Some("level=info%2Crudder_xds%3Ddebug")).0, 200);
        assert_eq!(level().as_deref(), Some("info,rudder_xds=debug"));
        assert_eq!(handle("PUT", Some("level=[[[")).0, 400, "a bad filter is refused, the old one kept");
        assert_eq!(level().as_deref(), Some("info,rudder_xds=debug"));
        assert_eq!(handle("PUT", None).0, 400);
        assert_eq!(handle("DELETE", None).0, 405);
    }
}

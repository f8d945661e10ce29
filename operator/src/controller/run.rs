//! `rudder operator run`: one `kube::runtime::Controller` per watched namespace (or one over all
//! namespaces), re-triggered by the objects it installed (found by their owner labels, so a
//! deleted or edited object is put back), `/healthz`, `/readyz` and `/metrics` on a plain TCP
//! responder, leader election on a Lease ([`super::leader`]; `/readyz` is not ready until this
//! replica leads, and losing the Lease ends the process so it restarts as a follower), and
//! graceful shutdown on SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::future::join_all;
use kube::api::DynamicObject;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};
use rudder_config::labels;
use rudder_config::operator::IstioOperator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::leader::{self, Elector};
use super::metrics::{self, Metrics};
use super::{Context, error_policy, reconcile};
use crate::install::resources;

/// How the controller runs.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Namespaces whose CRs are reconciled; empty means all.
    pub watched_namespaces: Vec<String>,
    /// Only reconcile CRs of this revision.
    pub revision: Option<String>,
    /// Port for `/healthz`, `/readyz` and `/metrics`.
    pub metrics_port: u16,
    /// Lease-based leader election; `None` reconciles right away.
    pub leader_election: Option<LeaderElection>,
}

/// Where the Lease lives and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub namespace: String,
    pub identity: String,
    /// `leaseDurationSeconds`; renewed every third of it.
    pub lease_duration_secs: i32,
}

impl LeaderElection {
    /// Namespace and identity from the environment ([`leader::default_namespace`],
    /// [`leader::default_identity`]), a 15 second lease.
    pub fn from_env() -> LeaderElection {
        LeaderElection {
            namespace: leader::default_namespace(),
            identity: leader::default_identity(),
            lease_duration_secs: 15,
        }
    }
}

/// Runs the controllers until a shutdown signal (or lost leadership); health endpoints meanwhile.
pub async fn run(client: Client, opts: RunOptions) -> anyhow::Result<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let ctx = Context::new(client.clone(), opts.revision.clone());
    let listener = TcpListener::bind(("0.0.0.0", opts.metrics_port)).await?;
    let health = tokio::spawn(serve_health(listener, ready.clone(), ctx.metrics.clone()));
    let mut lost = None;
    if let Some(le) = &opts.leader_election {
        let name = leader::lease_name(opts.revision.as_deref());
        let elector = Elector::new(client.clone(), &le.namespace, &name, &le.identity, le.lease_duration_secs);
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(elector.run(tx));
        tracing::info!(lease = %name, namespace = %le.namespace, identity = %le.identity, "waiting for leadership");
        tokio::select! {
            r = rx.wait_for(|leading| *leading) => { r?; }
            () = crate::signals::shutdown_signal() => {
                task.abort();
                health.abort();
                tracing::info!("operator stopped before leading");
                return Ok(());
            }
        }
        lost = Some((rx, task));
    }
    let controllers = crs_apis(&client, &opts.watched_namespaces).into_iter().map(|api| controller(api, &client, &ctx));
    ready.store(true, Ordering::SeqCst);
    tracing::info!(namespaces = ?opts.watched_namespaces, revision = ?opts.revision, "operator started");
    let outcome = match lost {
        Some((mut rx, task)) => {
            let outcome = tokio::select! {
                _ = join_all(controllers) => Ok(()),
                _ = rx.wait_for(|leading| !*leading) => Err(anyhow::anyhow!("lost the leader election lease")),
            };
            task.abort();
            outcome
        }
        None => {
            join_all(controllers).await;
            Ok(())
        }
    };
    ready.store(false, Ordering::SeqCst);
    health.abort();
    tracing::info!("operator stopped");
    outcome
}

fn crs_apis(client: &Client, namespaces: &[String]) -> Vec<Api<IstioOperator>> {
    match namespaces.iter().filter(|n| !n.is_empty()).collect::<Vec<_>>() {
        ns if ns.is_empty() => vec![Api::all(client.clone())],
        ns => ns.into_iter().map(|n| Api::namespaced(client.clone(), n)).collect(),
    }
}

async fn controller(api: Api<IstioOperator>, client: &Client, ctx: &Arc<Context>) {
    let owned = watcher::Config::default().labels(&format!("{}={}", labels::MANAGED, labels::MANAGED_RECONCILE));
    let mut c = Controller::new(api, watcher::Config::default());
    for info in resources::KINDS.iter().filter(|k| !k.is_namespace() && !k.is_crd()) {
        let ar = info.api_resource();
        c = c.watches_with(Api::all_with(client.clone(), &ar), ar, owned.clone(), owner_of);
    }
    c.shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

/// The CR an installed object belongs to, from its owner labels.
fn owner_of(obj: DynamicObject) -> Option<ObjectRef<IstioOperator>> {
    let l = obj.labels();
    let name = l.get(labels::OWNING_RESOURCE)?;
    let ns = l.get(labels::OWNING_RESOURCE_NAMESPACE)?;
    Some(ObjectRef::new(name).within(ns))
}

async fn serve_health(listener: TcpListener, ready: Arc<AtomicBool>, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let ready = ready.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let response = health_response(&request, ready.load(Ordering::SeqCst), &metrics);
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The HTTP response for one request's head: `/healthz`, `/readyz` or `/metrics`.
pub fn health_response(request: &str, ready: bool, metrics: &Metrics) -> String {
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let encoded;
    let (code, content_type, body) = match path {
        "/healthz" => ("200 OK", "text/plain", "ok"),
        "/readyz" if ready => ("200 OK", "text/plain", "ok"),
        "/readyz" => ("503 Service Unavailable", "text/plain", "not ready"),
        "/metrics" => {
            encoded = metrics.encode();
            ("200 OK", metrics::CONTENT_TYPE, encoded.as_str())
        }
        _ => ("404 Not Found", "text/plain", "not found"),
    };
    format!(
        "HTTP/1.1 {code}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_paths() {
        let m = Metrics::default();
        assert!(health_response("GET /healthz HTTP/1.1\r\n", false, &m).starts_with("HTTP/1.1 200"));
        assert!(health_response("GET /readyz HTTP/1.1\r\n", false, &m).starts_with("HTTP/1.1 503"));
        assert!(health_response("GET /readyz HTTP/1.1\r\n", true, &m).starts_with("HTTP/1.1 200"));
        assert!(health_response("GET /x HTTP/1.1\r\n", true, &m).starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn metrics_path_serves_the_registry() {
        let m = Metrics::default();
        m.reconciled(None, std::time::Duration::from_millis(3));
        let r = health_response("GET /metrics HTTP/1.1\r\n", false, &m);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("content-type: application/openmetrics-text"));
        assert!(r.contains("rudder_operator_reconciles_total{result=\"success\"} 1"), "{r}");
        let body = r.split("\r\n\r\n").nth(1).unwrap();
        assert!(r.contains(&format!("content-length: {}", body.len())));
    }
}

//! `rudder operator run`: one `kube::runtime::Controller` per watched namespace (or one over all
//! namespaces), re-triggered by the objects it installed (found by their owner labels, so a
//! deleted or edited object is put back), `/healthz`, `/readyz` and `/metrics` on a plain TCP
//! responder, leader election on a Lease ([`super::leader`]; losing the Lease ends the process so
//! it restarts as a follower), and graceful shutdown on SIGTERM or Ctrl-C, which also releases
//! the Lease so another replica leads at once.
//!
//! Readiness does not depend on leadership. `/readyz` turns ready once this replica has listed
//! the IstioOperators it watches (the API server answers, RBAC allows it, the CRD is served),
//! whether it leads or stands by; the `rudder_operator_leader` metric and the logs tell which.
//! Were followers unready, a rolling update of the operator Deployment would stall: the new pod
//! cannot lead while the old one holds the Lease, so it never gets ready, so the old pod is
//! never replaced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::{BoxFuture, Shared, join_all};
use futures::{FutureExt, StreamExt};
use kube::api::{DynamicObject, ListParams};
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

/// Runs the controllers until a shutdown signal, while this replica leads; health endpoints meanwhile.
pub async fn run(client: Client, opts: RunOptions) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", opts.metrics_port)).await?;
    run_on(listener, client, opts, crate::signals::shutdown_signal()).await
}

type Shutdown = Shared<BoxFuture<'static, ()>>;

/// How long in-flight reconciles get to finish after a shutdown signal. A controller stopped
/// before its cache ever synced does not finish on its own, so this bounds the wait (well within
/// a pod's default 30 second termination grace period) and the Lease is released regardless.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often an operator that cannot list IstioOperators yet tries again.
const LIST_RETRY: Duration = Duration::from_secs(2);

/// [`run`] with the health endpoints on `listener`, stopping when `shutdown` resolves.
pub async fn run_on(
    listener: TcpListener,
    client: Client,
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown: Shutdown = shutdown.boxed().shared();
    let ready = Arc::new(AtomicBool::new(false));
    let ctx = Context::new(client.clone(), opts.revision.clone());
    let health = tokio::spawn(serve_health(listener, ready.clone(), ctx.metrics.clone()));
    let apis = crs_apis(&client, &opts.watched_namespaces);
    // An API server that cannot be reached yet (a restart during its outage) is waited for:
    // exiting would only put the pod in a crash loop whose backoff outlasts the outage.
    loop {
        tokio::select! {
            r = can_list(&apis) => match r {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "cannot list IstioOperators yet; retrying"),
            },
            () = shutdown.clone() => {
                health.abort();
                return Ok(());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(LIST_RETRY) => {}
            () = shutdown.clone() => {
                health.abort();
                return Ok(());
            }
        }
    }
    ready.store(true, Ordering::SeqCst);
    tracing::info!("ready: IstioOperators can be listed");
    let controllers = || {
        // Boxed: a controller's future is large, and several of them inline would need a deep stack.
        join_all(apis.iter().cloned().map(|api| Box::pin(controller(api, &client, &ctx, shutdown.clone()))))
    };
    let grace_over = || async {
        shutdown.clone().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "controllers did not stop in time; exiting anyway");
    };
    let outcome = match &opts.leader_election {
        None => {
            ctx.metrics.set_leader(true);
            tracing::info!(namespaces = ?opts.watched_namespaces, revision = ?opts.revision, "operator started");
            tokio::select! {
                _ = controllers() => {}
                () = grace_over() => {}
            }
            Ok(())
        }
        Some(le) => {
            let name = leader::lease_name(opts.revision.as_deref());
            let elector = Elector::new(client.clone(), &le.namespace, &name, &le.identity, le.lease_duration_secs);
            let (tx, mut rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(elector.clone().run(tx));
            // Leadership lost (renewals refused, or failing longer than the lease, as while the
            // API server is down) stops the controllers and stands by again: the process keeps
            // its caches' health endpoints and leads again once it can renew.
            let outcome = loop {
                tracing::info!(lease = %name, namespace = %le.namespace, identity = %le.identity, "standing by for leadership");
                tokio::select! {
                    // The `watch::Ref` must not outlive the wait (it is not `Send`).
                    r = async { rx.wait_for(|leading| *leading).await.map(drop) } => {
                        if r.is_err() {
                            break Err(anyhow::anyhow!("the leader elector stopped"));
                        }
                    }
                    () = shutdown.clone() => {
                        tracing::info!("operator stopped before leading");
                        break Ok(());
                    }
                }
                ctx.metrics.set_leader(true);
                tracing::info!(namespaces = ?opts.watched_namespaces, revision = ?opts.revision, "operator started");
                tokio::select! {
                    _ = controllers() => break Ok(()),
                    () = grace_over() => break Ok(()),
                    _ = async { rx.wait_for(|leading| !*leading).await.map(drop) } => {
                        tracing::warn!("lost the leader election lease: controllers stopped until it is held again");
                        ctx.metrics.set_leader(false);
                    }
                }
            };
            task.abort();
            if outcome.is_ok() {
                release(&elector).await;
            }
            outcome
        }
    };
    ctx.metrics.set_leader(false);
    ready.store(false, Ordering::SeqCst);
    health.abort();
    tracing::info!("operator stopped");
    outcome
}

/// One list of IstioOperators per watched scope: what the controllers' caches start from.
async fn can_list(apis: &[Api<IstioOperator>]) -> anyhow::Result<()> {
    for api in apis {
        api.list(&ListParams::default().limit(1)).await?;
    }
    Ok(())
}

/// Gives the Lease up on the way out; a failure only costs the next leader the lease duration.
async fn release(elector: &Elector) {
    match elector.release().await {
        Ok(true) => tracing::info!(identity = %elector.identity(), "released the leader election lease"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not release the leader election lease"),
    }
}

fn crs_apis(client: &Client, namespaces: &[String]) -> Vec<Api<IstioOperator>> {
    match namespaces.iter().filter(|n| !n.is_empty()).collect::<Vec<_>>() {
        ns if ns.is_empty() => vec![Api::all(client.clone())],
        ns => ns.into_iter().map(|n| Api::namespaced(client.clone(), n)).collect(),
    }
}

async fn controller(api: Api<IstioOperator>, client: &Client, ctx: &Arc<Context>, shutdown: Shutdown) {
    let owned = watcher::Config::default().labels(&format!("{}={}", labels::MANAGED, labels::MANAGED_RECONCILE));
    let mut c = Controller::new(api, watcher::Config::default());
    for info in resources::KINDS.iter().filter(|k| !k.is_namespace() && !k.is_crd()) {
        let ar = info.api_resource();
        c = c.watches_with(Api::all_with(client.clone(), &ar), ar, owned.clone(), owner_of);
    }
    c.trigger_backoff(rudder_xds::registry::kube::reconnect_backoff())
        .graceful_shutdown_on(shutdown)
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
    let mut head = request.split_whitespace();
    let method = head.next().unwrap_or("");
    let target = head.next().unwrap_or("");
    let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
    let encoded;
    let logging;
    let (code, content_type, body) = match path {
        "/logging" => {
            let (status, text) = crate::logging::handle(method, query);
            logging = text;
            let code = match status {
                200 => "200 OK",
                400 => "400 Bad Request",
                405 => "405 Method Not Allowed",
                _ => "503 Service Unavailable",
            };
            (code, "text/plain", logging.as_str())
        }
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
        // The log filter is served there too (its value depends on the process's logger).
        assert!(!health_response("GET /logging HTTP/1.1\r\n", true, &m).starts_with("HTTP/1.1 404"));
        assert!(health_response("DELETE /logging HTTP/1.1\r\n", true, &m).starts_with("HTTP/1.1 405"));
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

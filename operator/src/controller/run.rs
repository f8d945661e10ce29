//! `rudder operator run`: one `kube::runtime::Controller` per watched namespace (or one over all
//! namespaces), re-triggered by the objects it installed (found by their owner labels, so a
//! deleted or edited object is put back), `/healthz` and `/readyz` on a plain TCP responder, and
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

use super::{Context, error_policy, reconcile};
use crate::install::resources;

/// How the controller runs.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Namespaces whose CRs are reconciled; empty means all.
    pub watched_namespaces: Vec<String>,
    /// Only reconcile CRs of this revision.
    pub revision: Option<String>,
    /// Port for `/healthz` and `/readyz`.
    pub metrics_port: u16,
}

/// Runs the controllers until a shutdown signal; health endpoints meanwhile.
pub async fn run(client: Client, opts: RunOptions) -> anyhow::Result<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let listener = TcpListener::bind(("0.0.0.0", opts.metrics_port)).await?;
    let health = tokio::spawn(serve_health(listener, ready.clone()));
    let ctx = Context::new(client.clone(), opts.revision.clone());
    let controllers = crs_apis(&client, &opts.watched_namespaces).into_iter().map(|api| controller(api, &client, &ctx));
    ready.store(true, Ordering::SeqCst);
    tracing::info!(namespaces = ?opts.watched_namespaces, revision = ?opts.revision, "operator started");
    join_all(controllers).await;
    health.abort();
    tracing::info!("operator stopped");
    Ok(())
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

async fn serve_health(listener: TcpListener, ready: Arc<AtomicBool>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let response = health_response(&String::from_utf8_lossy(&buf[..n]), ready.load(Ordering::SeqCst));
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The HTTP response for one request's head.
pub fn health_response(request: &str, ready: bool) -> String {
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (code, body) = match path {
        "/healthz" => ("200 OK", "ok"),
        "/readyz" if ready => ("200 OK", "ok"),
        "/readyz" => ("503 Service Unavailable", "not ready"),
        _ => ("404 Not Found", "not found"),
    };
    format!(
        "HTTP/1.1 {code}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_paths() {
        assert!(health_response("GET /healthz HTTP/1.1\r\n", false).starts_with("HTTP/1.1 200"));
        assert!(health_response("GET /readyz HTTP/1.1\r\n", false).starts_with("HTTP/1.1 503"));
        assert!(health_response("GET /readyz HTTP/1.1\r\n", true).starts_with("HTTP/1.1 200"));
        assert!(health_response("GET /x HTTP/1.1\r\n", true).starts_with("HTTP/1.1 404"));
    }
}

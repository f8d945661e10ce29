//! Readiness: when a Deployment counts as rolled out (pure), and the poll loop that waits for all
//! of an install's Deployments with a timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::plan::{ObjectKey, Owner};
use super::{InstallError, Progress};

/// Why a Deployment is not ready yet, or `None` when its current spec is fully rolled out.
pub fn deployment_pending(d: &Deployment) -> Option<String> {
    let want = d.spec.replicas.unwrap_or(1);
    let Some(status) = d.status.as_ref() else {
        return Some("no status yet".to_owned());
    };
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Some("new spec not observed yet".to_owned());
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated < want {
        return Some(format!("{updated}/{want} replicas updated"));
    }
    if total > updated {
        return Some(format!("{} old replicas pending termination", total - updated));
    }
    if ready < want || available < want {
        return Some(format!("{ready}/{want} replicas ready"));
    }
    None
}

/// For each wanted Deployment, why it is not ready (absent ones are "not found"); ready ones are left out.
pub fn pending(wanted: &[ObjectKey], found: &[Deployment]) -> BTreeMap<ObjectKey, String> {
    let by_key: BTreeMap<ObjectKey, &Deployment> = found
        .iter()
        .map(|d| {
            let key = ObjectKey { kind: "Deployment".into(), namespace: d.namespace(), name: d.name_any() };
            (key, d)
        })
        .collect();
    wanted
        .iter()
        .filter_map(|k| {
            let reason = match by_key.get(k) {
                Some(d) => deployment_pending(d)?,
                None => "not found".to_owned(),
            };
            Some((k.clone(), reason))
        })
        .collect()
}

/// Polls (one list call per round) until every wanted Deployment is ready or `timeout` passes.
pub async fn wait_for_deployments(
    client: &Client,
    owner: &Owner,
    wanted: &[ObjectKey],
    timeout: Duration,
    interval: Duration,
    progress: &mut Progress,
) -> Result<(), InstallError> {
    if wanted.is_empty() {
        return Ok(());
    }
    let api: Api<Deployment> = Api::all(client.clone());
    let params = ListParams::default().labels(&owner.selector());
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let found = api.list(&params).await.map_err(|e| InstallError::kube("list", "Deployments", e))?;
        let pending = pending(wanted, &found.items);
        if pending.is_empty() {
            return Ok(());
        }
        let summary: Vec<String> = pending.iter().map(|(k, why)| format!("{k} ({why})")).collect();
        if tokio::time::Instant::now() >= deadline {
            return Err(InstallError::Timeout { seconds: timeout.as_secs(), pending: summary });
        }
        progress.waiting(&format!("Waiting for {}", summary.join(", ")));
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};

    fn deployment(generation: i64, replicas: i32, status: Option<DeploymentStatus>) -> Deployment {
        let mut d = Deployment {
            spec: DeploymentSpec { replicas: Some(replicas), ..DeploymentSpec::default() },
            status,
            ..Deployment::default()
        };
        d.metadata.generation = Some(generation);
        d.metadata.name = Some("istiod".into());
        d.metadata.namespace = Some("istio-system".into());
        d
    }

    fn status(observed: i64, total: i32, updated: i32, ready: i32) -> Option<DeploymentStatus> {
        Some(DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(total),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(ready),
            ..DeploymentStatus::default()
        })
    }

    #[test]
    fn readiness_table() {
        let cases = [
            (deployment(1, 1, None), Some("no status yet")),
            (deployment(2, 1, status(1, 1, 1, 1)), Some("new spec not observed yet")),
            (deployment(2, 2, status(2, 2, 1, 1)), Some("1/2 replicas updated")),
            (deployment(2, 1, status(2, 2, 1, 1)), Some("1 old replicas pending termination")),
            (deployment(2, 2, status(2, 2, 2, 1)), Some("1/2 replicas ready")),
            (deployment(2, 2, status(2, 2, 2, 2)), None),
        ];
        for (d, want) in cases {
            assert_eq!(deployment_pending(&d).as_deref(), want);
        }
    }

    #[test]
    fn absent_deployments_are_pending() {
        let key = |name: &str| ObjectKey {
            kind: "Deployment".into(),
            namespace: Some("istio-system".into()),
            name: name.into(),
        };
        let ready = deployment(1, 1, status(1, 1, 1, 1));
        let got = pending(&[key("istiod"), key("istio-ingressgateway")], &[ready]);
        assert_eq!(got.into_iter().collect::<Vec<_>>(), [(key("istio-ingressgateway"), "not found".to_owned())]);
    }
}

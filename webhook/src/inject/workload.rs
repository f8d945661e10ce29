//! The workload a pod belongs to (for `ISTIO_META_WORKLOAD_NAME` / `ISTIO_META_OWNER`) and its
//! canonical service name and revision labels.

use std::collections::BTreeMap;

use rudder_config::labels;
use serde_json::Value;

/// The workload that owns a pod: `kube-inject` knows it from the document, the webhook derives
/// it from the pod's controller owner reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadMeta {
    pub name: String,
    pub kind: String,
    pub api_version: String,
}

impl WorkloadMeta {
    /// `kubernetes://apis/<apiVersion>/namespaces/<ns>/<kind lower>s/<name>`.
    pub fn owner_uri(&self, namespace: &str) -> String {
        format!(
            "kubernetes://apis/{}/namespaces/{namespace}/{}s/{}",
            self.api_version,
            self.kind.to_lowercase(),
            self.name
        )
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Derives the workload from a pod (JSON): the controller owner, with a ReplicaSet named
/// `<deployment>-<pod-template-hash>` read as its Deployment and a Job named `<cronjob>-<digits>`
/// (8 to 10 digits) as its CronJob; the pod itself when it has no controller.
pub fn derive(pod: &Value) -> WorkloadMeta {
    let pod_name = str_at(pod, &["metadata", "name"])
        .filter(|n| !n.is_empty())
        .or_else(|| str_at(pod, &["metadata", "generateName"]))
        .unwrap_or_default();
    let owners = pod.pointer("/metadata/ownerReferences").and_then(Value::as_array);
    let controller = owners.and_then(|o| o.iter().find(|r| r.get("controller") == Some(&Value::Bool(true))));
    let Some(owner) = controller else {
        return WorkloadMeta { name: pod_name.to_owned(), kind: "Pod".into(), api_version: "v1".into() };
    };
    let kind = str_at(owner, &["kind"]).unwrap_or_default();
    let name = str_at(owner, &["name"]).unwrap_or_default();
    let api_version = str_at(owner, &["apiVersion"]).unwrap_or_default();
    let hash = str_at(pod, &["metadata", "labels", "pod-template-hash"]);
    match kind {
        "ReplicaSet" => match hash.and_then(|h| name.strip_suffix(h)).and_then(|n| n.strip_suffix('-')) {
            Some(deployment) => meta(deployment, "Deployment", "apps/v1"),
            None => meta(name, kind, api_version),
        },
        "Job" => match cronjob_of(name) {
            Some(cronjob) => meta(cronjob, "CronJob", "batch/v1"),
            None => meta(name, kind, api_version),
        },
        _ => meta(name, kind, api_version),
    }
}

fn meta(name: &str, kind: &str, api_version: &str) -> WorkloadMeta {
    WorkloadMeta { name: name.to_owned(), kind: kind.to_owned(), api_version: api_version.to_owned() }
}

fn cronjob_of(job: &str) -> Option<&str> {
    let (prefix, digits) = job.rsplit_once('-')?;
    ((8..=10).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())).then_some(prefix)
}

/// `service.istio.io/canonical-name`: the existing label, else `app.kubernetes.io/name`, `app`,
/// the workload name; at most 63 characters, trimmed of `-`, `_` and `.`.
pub fn canonical_name(pod_labels: &BTreeMap<String, String>, workload: &WorkloadMeta) -> String {
    let name = [labels::CANONICAL_NAME, labels::APP_NAME, labels::APP]
        .iter()
        .find_map(|k| pod_labels.get(*k))
        .cloned()
        .unwrap_or_else(|| workload.name.clone());
    let cut: String = name.chars().take(63).collect();
    cut.trim_matches(['-', '_', '.']).to_owned()
}

/// `service.istio.io/canonical-revision`: the existing label, else `app.kubernetes.io/version`,
/// `version`, else `latest`.
pub fn canonical_revision(pod_labels: &BTreeMap<String, String>) -> String {
    [labels::CANONICAL_REVISION, labels::APP_VERSION, labels::VERSION]
        .iter()
        .find_map(|k| pod_labels.get(*k))
        .cloned()
        .unwrap_or_else(|| "latest".into())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn derives_deployment_and_cronjob() {
        let rs = json!({"metadata": {"generateName": "web-5d4f8-", "labels": {"pod-template-hash": "5d4f8"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f8", "controller": true}]}});
        assert_eq!(derive(&rs), meta("web", "Deployment", "apps/v1"));
        assert_eq!(derive(&rs).owner_uri("ns"), "kubernetes://apis/apps/v1/namespaces/ns/deployments/web");
        let job = json!({"metadata": {"name": "x",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "nightly-28374650", "controller": true}]}});
        assert_eq!(derive(&job), meta("nightly", "CronJob", "batch/v1"));
        assert_eq!(derive(&json!({"metadata": {"name": "solo"}})), meta("solo", "Pod", "v1"));
    }

    #[test]
    fn canonical_labels() {
        let w = meta("web", "Deployment", "apps/v1");
        let l: BTreeMap<String, String> = [("app".to_owned(), "-shop.".to_owned())].into();
        assert_eq!(canonical_name(&l, &w), "shop");
        assert_eq!(canonical_name(&BTreeMap::new(), &w), "web");
        assert_eq!(canonical_revision(&BTreeMap::new()), "latest");
    }
}

//! The mesh CA in a cluster: where its material lives and how workloads learn the root.
//!
//! - A plugged-in CA is the Secret `cacerts` (`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`,
//!   `root-cert.pem`) in discovery's namespace; without it, discovery uses the self-signed root
//!   kept in `istio-ca-secret`, generating and storing one at first start. Two replicas starting
//!   together race on the create; the loser reads the winner's.
//! - The root is published as the ConfigMap `istio-ca-root-cert` (key `root-cert.pem`) in every
//!   namespace, kept so as namespaces come and the ConfigMap is edited or deleted. Pods mount
//!   it (the injector's `istiod-ca-cert` volume) to verify discovery and their peers.

use std::collections::BTreeMap;
use std::time::SystemTime;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::ca::{CaError, CaMaterial, generate_root};

/// The plugged-in CA's Secret.
pub const PLUGGED_SECRET: &str = "cacerts";
/// The self-signed CA's Secret.
pub const SELF_SIGNED_SECRET: &str = "istio-ca-secret";
/// The ConfigMap carrying the root in every namespace.
pub const ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Its key.
pub const ROOT_KEY: &str = "root-cert.pem";
const FIELD_MANAGER: &str = "rudder-discovery";

#[derive(Debug, thiserror::Error)]
pub enum CaStoreError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("Secret {0}: {1}")]
    Material(String, CaError),
    #[error(transparent)]
    Ca(#[from] CaError),
}

fn entries(secret: &Secret) -> impl Fn(&str) -> Option<String> + '_ {
    move |name| secret.data.as_ref().and_then(|d| d.get(name)).and_then(|v| String::from_utf8(v.0.clone()).ok())
}

/// The CA material: `cacerts` if present, else `istio-ca-secret` (created when missing).
/// Also says which Secret it came from.
pub async fn load_or_create(
    client: Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<(CaMaterial, &'static str), CaStoreError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    for name in [PLUGGED_SECRET, SELF_SIGNED_SECRET] {
        if let Some(secret) = secrets.get_opt(name).await? {
            match CaMaterial::from_entries(entries(&secret)) {
                Ok(Some(material)) => return Ok((material, name)),
                Ok(None) => tracing::warn!(secret = name, namespace, "Secret holds no CA material; ignored"),
                Err(e) => return Err(CaStoreError::Material(format!("{namespace}/{name}"), e)),
            }
        }
    }
    let material = generate_root(trust_domain, SystemTime::now())?;
    let data: BTreeMap<String, ByteString> =
        material.entries().iter().map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec()))).collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SELF_SIGNED_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        type_: Some("istio.io/ca-root".to_owned()),
        data: Some(data),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(namespace, "generated the mesh root, kept in Secret {SELF_SIGNED_SECRET}");
            Ok((material, SELF_SIGNED_SECRET))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let stored = secrets.get(SELF_SIGNED_SECRET).await?;
            let name = format!("{namespace}/{SELF_SIGNED_SECRET}");
            let material = CaMaterial::from_entries(entries(&stored))
                .map_err(|e| CaStoreError::Material(name.clone(), e))?
                .ok_or_else(|| CaStoreError::Material(name, CaError::Material("no CA material".into())))?;
            Ok((material, SELF_SIGNED_SECRET))
        }
        Err(e) => Err(e.into()),
    }
}

/// The root ConfigMap for `namespace`.
pub fn root_configmap(namespace: &str, root_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CONFIGMAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([("istio.io/config".to_owned(), "true".to_owned())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(ROOT_KEY.to_owned(), root_pem.to_owned())])),
        ..Default::default()
    }
}

/// Keeps `istio-ca-root-cert` in every active namespace until `stop` completes. Namespaces
/// are watched (a new one gets the ConfigMap at once); the ConfigMaps themselves are watched
/// too, so an edited or deleted one is put back.
pub async fn publish_root(client: Client, root_pem: String, stop: impl std::future::Future<Output = ()>) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let configmaps: Api<ConfigMap> = Api::all(client.clone());
    let namespace_events = watcher(namespaces, watcher::Config::default())
        .backoff(crate::registry::kube::reconnect_backoff())
        .touched_objects()
        .map(|event| {
            event.map(|ns: Namespace| (ns.metadata.name.unwrap_or_default(), ns.status.and_then(|s| s.phase)))
        });
    let wanted = root_pem.clone();
    let configmap_events =
        watcher(configmaps, watcher::Config::default().fields(&format!("metadata.name={ROOT_CONFIGMAP}")))
            .backoff(crate::registry::kube::reconnect_backoff())
            .filter_map(move |event| {
                let stale = |cm: &ConfigMap| cm.data.as_ref().and_then(|d| d.get(ROOT_KEY)) != Some(&wanted);
                let republish = match event {
                    Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) if stale(&cm) => {
                        Some(Ok((cm.metadata.namespace.unwrap_or_default(), None)))
                    }
                    Ok(watcher::Event::Delete(cm)) => Some(Ok((cm.metadata.namespace.unwrap_or_default(), None))),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                };
                std::future::ready(republish)
            });
    let events = futures::stream::select(namespace_events, configmap_events);
    let publish = events.for_each_concurrent(4, |event| {
        let client = client.clone();
        let root_pem = root_pem.clone();
        async move {
            let (namespace, phase) = match event {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(%error, "watching namespaces for the root ConfigMap");
                    return;
                }
            };
            if namespace.is_empty() || phase.as_deref() == Some("Terminating") {
                return;
            }
            let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
            let patch = Patch::Apply(root_configmap(&namespace, &root_pem));
            if let Err(error) = api.patch(ROOT_CONFIGMAP, &PatchParams::apply(FIELD_MANAGER).force(), &patch).await {
                tracing::warn!(%namespace, %error, "cannot publish {ROOT_CONFIGMAP}");
            }
        }
    });
    tokio::select! {
        () = publish => {}
        () = stop => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;

    use super::*;

    /// An API server holding Secrets by name in `istio-system`; with `winner`, a
    /// create answer 409 after storing `winner` (another replica created it first). Records
    /// the requests as `METHOD name`.
    fn api(secrets: Vec<Secret>, winner: Option<Secret>) -> (Client, Arc<Mutex<Vec<String>>>) {
        let (service, mut handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut stored: BTreeMap<String, Secret> =
                secrets.into_iter().map(|s| (s.metadata.name.clone().unwrap(), s)).collect();
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                let name = path.rsplit('/').next().unwrap_or_default().to_owned();
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let (status, answer) = match method.as_str() {
                    "GET" => match stored.get(&name) {
                        Some(secret) => (200, serde_json::to_vec(secret).unwrap()),
                        None => (404, not_found(&name)),
                    },
                    "POST" => {
                        let created: Secret = serde_json::from_slice(&body).unwrap();
                        let key = created.metadata.name.clone().unwrap();
                        match &winner {
                            Some(first) => {
                                stored.insert(key.clone(), first.clone());
                                (
                                    409,
                                    serde_json::to_vec(&serde_json::json!({"kind": "Status", "apiVersion": "v1",
                                    "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "exists"}))
                                    .unwrap(),
                                )
                            }
                            None => {
                                stored.insert(key, created.clone());
                                (201, serde_json::to_vec(&created).unwrap())
                            }
                        }
                    }
                    other => panic!("unexpected {other} {path}"),
                };
                log.lock().unwrap().push(format!("{method} {name}"));
                let mut response = http::Response::new(kube::client::Body::from(answer));
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                send.send_response(response);
            }
        });
        (Client::new(service, "istio-system"), seen)
    }

    fn not_found(name: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": format!("secrets \"{name}\" not found")}))
        .unwrap()
    }

    fn secret(name: &str, material: &CaMaterial) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("istio-system".into()),
                ..Default::default()
            },
            data: Some(
                material.entries().iter().map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec()))).collect(),
            ),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_plugged_in_cacerts_wins_over_the_self_signed_secret() {
        let plugged = generate_root("cluster.local", SystemTime::now()).unwrap();
        let own = generate_root("cluster.local", SystemTime::now()).unwrap();
        let (client, seen) = api(vec![secret(PLUGGED_SECRET, &plugged), secret(SELF_SIGNED_SECRET, &own)], None);
        let (material, source) = load_or_create(client, "istio-system", "cluster.local").await.unwrap();
        assert_eq!((source, material), (PLUGGED_SECRET, plugged));
        assert_eq!(*seen.lock().unwrap(), ["GET cacerts"]);
    }

    #[tokio::test]
    async fn without_a_ca_one_is_generated_and_kept() {
        let (client, seen) = api(vec![], None);
        let (material, source) = load_or_create(client, "istio-system", "cluster.local").await.unwrap();
        assert_eq!(source, SELF_SIGNED_SECRET);
        assert!(material.root_cert.contains("BEGIN CERTIFICATE"));
        assert_eq!(*seen.lock().unwrap(), ["GET cacerts", "GET istio-ca-secret", "POST secrets"]);
    }

    #[tokio::test]
    async fn a_replica_that_loses_the_create_race_uses_the_winners_root() {
        let first = generate_root("cluster.local", SystemTime::now()).unwrap();
        let (client, seen) = api(vec![], Some(secret(SELF_SIGNED_SECRET, &first)));
        let (material, source) = load_or_create(client, "istio-system", "cluster.local").await.unwrap();
        assert_eq!((source, material), (SELF_SIGNED_SECRET, first));
        assert_eq!(
            *seen.lock().unwrap(),
            ["GET cacerts", "GET istio-ca-secret", "POST secrets", "GET istio-ca-secret"]
        );
    }
}

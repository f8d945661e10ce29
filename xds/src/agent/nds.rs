//! The agent's NDS client: its own ADS stream to discovery (plaintext gRPC, state of the
//! world), with the same node identity as the Envoy bootstrap, subscribed to the name table
//! only. Every table received replaces the one the DNS proxy answers from and is ACKed; one
//! that does not decode is NACKed and the previous one kept. A broken stream is reopened with
//! exponential backoff (0.5 s doubling to 30 s, reset once a stream delivers a table); the
//! last table keeps serving meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{ListValue, NullValue, Struct, Value, value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use super::identity::DiscoveryTarget;

use super::bootstrap::BootstrapOptions;
use super::dns::Lookup;
use crate::nametable::{NameTable, TYPE_URL};

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The xDS node of the proxy: the id, cluster and metadata of its Envoy bootstrap.
pub fn node(options: &BootstrapOptions) -> Node {
    Node {
        id: options.node_id(),
        cluster: options.service_cluster(),
        metadata: Some(to_struct(options.node_metadata())),
        ..Default::default()
    }
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct { fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect() }
}

fn to_value(json: serde_json::Value) -> Value {
    use serde_json::Value as Json;
    let kind = match json {
        Json::Null => value::Kind::NullValue(NullValue::NullValue as i32),
        Json::Bool(b) => value::Kind::BoolValue(b),
        Json::Number(n) => value::Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => value::Kind::StringValue(s),
        Json::Array(items) => value::Kind::ListValue(ListValue { values: items.into_iter().map(to_value).collect() }),
        Json::Object(map) => value::Kind::StructValue(to_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// Keeps `names` up to date from `discovery` until the task is dropped or aborted, or every
/// receiver of `names` is gone.
pub async fn run(discovery: DiscoveryTarget, node: Node, names: watch::Sender<Arc<Lookup>>) {
    let url = discovery.address.clone();
    let endpoint = match discovery.endpoint() {
        Ok(endpoint) => endpoint,
        Err(error) => {
            tracing::error!(%url, %error, "bad discovery address; the DNS proxy gets no name table");
            return;
        }
    };
    let mut backoff = BACKOFF_START;
    loop {
        let received = match stream(&endpoint, &node, &names).await {
            Ok(received) => {
                tracing::info!(%url, "name table stream closed by discovery; reconnecting");
                received
            }
            Err((received, error)) => {
                tracing::warn!(%url, %error, "name table stream failed; reconnecting");
                received
            }
        };
        if names.is_closed() {
            return;
        }
        if received {
            backoff = BACKOFF_START;
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Up to a quarter more than `base`, so agents restarted together do not reconnect together.
fn jitter(base: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// One stream. `Ok(received)`: discovery closed it; `Err`: it failed. `received` says whether
/// any table arrived.
async fn stream(endpoint: &Endpoint, node: &Node, names: &watch::Sender<Arc<Lookup>>) -> Result<bool, (bool, String)> {
    let mut received = false;
    let channel = endpoint.connect().await.map_err(|e| (false, e.to_string()))?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(4);
    let first = DiscoveryRequest { node: Some(node.clone()), type_url: TYPE_URL.to_owned(), ..Default::default() };
    tx.send(first).await.map_err(|e| (false, e.to_string()))?;
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|s| (false, s.to_string()))?
        .into_inner();
    let mut version_applied = String::new();
    loop {
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(received),
            Err(status) => return Err((received, status.to_string())),
        };
        if response.type_url != TYPE_URL {
            continue;
        }
        let reply = match decode(&response) {
            Ok(table) => {
                let lookup = Lookup::from_table(&table);
                tracing::info!(
                    hosts = table.table.len(),
                    names = lookup.len(),
                    version = response.version_info,
                    "name table received"
                );
                names.send_replace(Arc::new(lookup));
                received = true;
                version_applied = response.version_info.clone();
                ack(&response, &version_applied, None)
            }
            Err(message) => {
                tracing::warn!(message, "name table rejected; keeping the previous one");
                ack(&response, &version_applied, Some(message))
            }
        };
        if tx.send(reply).await.is_err() {
            return Err((received, "request stream closed".to_owned()));
        }
    }
}

fn decode(response: &DiscoveryResponse) -> Result<NameTable, String> {
    match response.resources.as_slice() {
        [] => Ok(NameTable { table: BTreeMap::new() }),
        [any] if any.type_url == TYPE_URL => NameTable::decode(any.value.as_slice()).map_err(|e| e.to_string()),
        [any] => Err(format!("unexpected resource type {}", any.type_url)),
        many => Err(format!("{} name tables in one response", many.len())),
    }
}

/// The ACK (or, with `error`, NACK) of `response`.
fn ack(response: &DiscoveryResponse, version_applied: &str, error: Option<String>) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: TYPE_URL.to_owned(),
        version_info: version_applied.to_owned(),
        response_nonce: response.nonce.clone(),
        error_detail: error.map(|message| RpcStatus { code: 3, message, details: Vec::new() }),
        ..Default::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn node_carries_the_bootstrap_identity() {
        let options = BootstrapOptions {
            pod_name: "sleep-1".into(),
            namespace: "testns1".into(),
            labels: [("app".to_owned(), "sleep".to_owned())].into(),
            ..Default::default()
        };
        let node = node(&options);
        assert_eq!(node.id, "sidecar~127.0.0.1~sleep-1.testns1~testns1.svc.cluster.local");
        assert_eq!(node.cluster, "sleep.testns1");
        let meta = crate::server::connection::struct_to_json(node.metadata.as_ref().unwrap());
        assert_eq!(meta["NAMESPACE"], "testns1");
        assert_eq!(meta["LABELS"]["app"], "sleep");
    }

    #[test]
    fn decode_rejects_foreign_resources() {
        let any =
            |type_url: &str| envoy_types::pb::google::protobuf::Any { type_url: type_url.into(), value: Vec::new() };
        let response = |resources| DiscoveryResponse { resources, ..Default::default() };
        assert!(decode(&response(vec![])).unwrap().table.is_empty());
        assert!(decode(&response(vec![any(TYPE_URL)])).is_ok());
        assert!(decode(&response(vec![any("type.googleapis.com/x")])).is_err());
        assert!(decode(&response(vec![any(TYPE_URL), any(TYPE_URL)])).is_err());
    }
}

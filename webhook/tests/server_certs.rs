//! The certificate shells against a mocked Kubernetes API (tower-test), the way kube-rs tests
//! its clients: each test scripts the API server's side of the conversation.

use std::time::SystemTime;

use axum::body::Body;
use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body as KubeBody;
use rudder_webhook::certs;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

fn mocked() -> (Client, Handle<Request<KubeBody>, Response<KubeBody>>) {
    let (service, handle) = mock::pair::<Request<KubeBody>, Response<KubeBody>>();
    (Client::new(service, "istio-system"), handle)
}

fn reply(status: u16, body: &Value) -> Response<KubeBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(KubeBody::from(serde_json::to_vec(body).expect("encode")))
        .expect("response")
}

async fn body_json(request: Request<KubeBody>) -> Value {
    let bytes = axum::body::to_bytes(Body::new(request.into_body()), usize::MAX).await.expect("body");
    serde_json::from_slice(&bytes).expect("json body")
}

fn mwc(name: &str, bundles: &[Option<&str>]) -> Value {
    let webhooks: Vec<Value> = bundles
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut cc = json!({"service": {"name": "istiod", "namespace": "istio-system", "path": "/inject"}});
            if let Some(b) = b {
                cc["caBundle"] = json!(b);
            }
            json!({"name": format!("{i}.sidecar-injector.istio.io"), "clientConfig": cc,
                   "sideEffects": "None", "admissionReviewVersions": ["v1"]})
        })
        .collect();
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": name, "resourceVersion": "7", "labels": {"istio.io/rev": "canary"}},
           "webhooks": webhooks})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

#[tokio::test]
async fn ca_bundle_is_patched_into_the_revisions_webhook_configurations() {
    let (client, mut api) = mocked();
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let expected_b64 = serde_json::to_value(k8s_openapi::ByteString(ca.as_bytes().to_vec())).expect("b64");
    let server = tokio::spawn(async move {
        // Mutating: one configuration needing the bundle, one already up to date.
        let (request, send) = api.next_request().await.expect("list mutating");
        assert_eq!(request.method(), Method::GET);
        let uri = request.uri().to_string();
        assert!(uri.starts_with("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations?"), "{uri}");
        assert!(uri.contains("labelSelector=istio.io%2Frev%3Dcanary"), "{uri}");
        let current = expected_b64.as_str().expect("str");
        let items =
            vec![mwc("istio-sidecar-injector-canary", &[None, Some("b2xk")]), mwc("up-to-date", &[Some(current)])];
        send.send_response(reply(200, &list("MutatingWebhookConfigurationList", items)));

        let (request, send) = api.next_request().await.expect("replace");
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(
            request.uri().path(),
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector-canary"
        );
        let body = body_json(request).await;
        assert_eq!(body["metadata"]["resourceVersion"], "7", "optimistic concurrency");
        for hook in body["webhooks"].as_array().expect("webhooks") {
            assert_eq!(hook["clientConfig"]["caBundle"], expected_b64);
        }
        send.send_response(reply(200, &body));

        let (request, send) = api.next_request().await.expect("list validating");
        assert!(request.uri().path().ends_with("/validatingwebhookconfigurations"));
        send.send_response(reply(200, &list("ValidatingWebhookConfigurationList", vec![])));
    });
    let updated = certs::patch_ca_bundles(&client, Some("canary"), ca).await.expect("patched");
    assert_eq!(updated, 1);
    server.await.expect("mock server");
}

#[tokio::test]
async fn a_missing_secret_is_created_and_an_existing_one_reused() {
    let names = certs::dns_names("istiod", "istio-system");
    let (client, mut api) = mocked();
    let server = tokio::spawn(async move {
        let (request, send) = api.next_request().await.expect("get secret");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/api/v1/namespaces/istio-system/secrets/istiod-webhook-certs");
        send.send_response(reply(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        ));
        let (request, send) = api.next_request().await.expect("create secret");
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().path(), "/api/v1/namespaces/istio-system/secrets");
        let body = body_json(request).await;
        send.send_response(reply(201, &body));
        body
    });
    let now = SystemTime::now();
    let bundle =
        certs::ensure_secret(&client, "istio-system", "istiod-webhook-certs", &names, now).await.expect("created");
    let stored = server.await.expect("mock server");
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(stored.clone()).expect("secret");
    assert_eq!(certs::from_secret(&secret).expect("parse"), bundle);

    // Second start: the Secret exists and is fresh, so nothing is written.
    let (client, mut api) = mocked();
    let server = tokio::spawn(async move {
        let (_, send) = api.next_request().await.expect("get secret");
        send.send_response(reply(200, &stored));
        assert!(api.next_request().await.is_none(), "no writes for a fresh secret");
    });
    let again = certs::ensure_secret(&client, "istio-system", "istiod-webhook-certs", &names, now).await.expect("read");
    assert_eq!(again, bundle);
    drop(client);
    server.await.expect("mock server");
}

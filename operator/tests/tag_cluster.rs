//! `tag set|list|remove` against the mocked API: the requests they make and the §1.9 refusals.

#![allow(clippy::unwrap_used)]

mod install_support;

use install_support::{Call, FakeApi, injector};
use pretty_assertions::assert_eq;
use rudder_operator::tag::{self, SetOptions, TagError, TagInfo};
use serde_json::json;

const MWC: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";

fn cluster_with(revisions: &[&str]) -> (kube::Client, FakeApi) {
    let (client, fake) = FakeApi::start();
    for rev in revisions {
        let v = injector(rev);
        fake.seed("mutatingwebhookconfigurations", None, v);
    }
    (client, fake)
}

fn namespace(fake: &FakeApi, name: &str, rev: &str) {
    let ns =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"istio.io/rev": rev}}});
    fake.seed("namespaces", None, ns);
}

#[tokio::test]
async fn set_lists_then_applies_the_tag() {
    let (client, fake) = cluster_with(&["canary"]);
    tag::set(&client, "prod", "canary", &SetOptions::default()).await.unwrap();
    let calls = fake.calls();
    let lines: Vec<String> = calls.iter().map(Call::line).collect();
    assert_eq!(
        lines,
        [format!("GET {MWC}"), "GET /api/v1/namespaces".to_owned(), format!("PATCH {MWC}/istio-revision-tag-prod")]
    );
    assert_eq!(calls[0].label_selector.as_deref(), Some("app=sidecar-injector"));
    assert_eq!(calls[1].label_selector.as_deref(), Some("istio.io/rev=prod"));
    assert_eq!((calls[2].field_manager.as_deref(), calls[2].force), (Some("rudder"), true));
    let stored = fake.get("mutatingwebhookconfigurations", None, "istio-revision-tag-prod").unwrap();
    assert_eq!(stored["kind"], "MutatingWebhookConfiguration");
    assert_eq!(stored["metadata"]["labels"]["istio.io/rev"], "canary");
}

#[tokio::test]
async fn default_tag_deactivates_the_unrevisioned_injector_and_adds_the_validator() {
    let (client, fake) = cluster_with(&["default", "canary"]);
    fake.seed(
        "validatingwebhookconfigurations",
        None,
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "istio-validator-canary-istio-system", "labels": {"istio.io/rev": "canary"}},
            "webhooks": [{"name": "rev.validation.istio.io", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                "clientConfig": {"service": {"name": "istiod-canary", "namespace": "istio-system"}}}]}),
    );
    tag::set(&client, "default", "canary", &SetOptions::default()).await.unwrap();
    let applies: Vec<String> = fake.calls().iter().filter(|c| c.is_apply()).map(Call::line).collect();
    assert_eq!(
        applies,
        [
            format!("PATCH {MWC}/istio-revision-tag-default"),
            format!("PATCH {MWC}/istio-sidecar-injector"),
            "PATCH /apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/istiod-default-validator"
                .to_owned(),
        ]
    );
    let legacy = fake.get("mutatingwebhookconfigurations", None, "istio-sidecar-injector").unwrap();
    assert_eq!(legacy["webhooks"][0]["namespaceSelector"]["matchLabels"]["istio.io/deactivated"], "never-match");
    let validator = fake.get("validatingwebhookconfigurations", None, "istiod-default-validator").unwrap();
    assert_eq!(validator["webhooks"][0]["clientConfig"]["service"]["name"], "istiod-canary");
}

#[tokio::test]
async fn refusals() {
    let (client, fake) = cluster_with(&["canary", "stable"]);
    let err = tag::set(&client, "prod", "missing", &SetOptions::default()).await.unwrap_err();
    assert!(matches!(&err, TagError::RevisionNotFound { known, .. } if known == &["canary", "stable"]), "{err}");
    let err = tag::set(&client, "stable", "canary", &SetOptions::default()).await.unwrap_err();
    assert!(matches!(err, TagError::TagIsRevision { .. }), "{err}");

    tag::set(&client, "prod", "stable", &SetOptions::default()).await.unwrap();
    namespace(&fake, "shop", "prod");
    // same revision again is a no-op re-apply
    tag::set(&client, "prod", "stable", &SetOptions::default()).await.unwrap();
    let err = tag::set(&client, "prod", "canary", &SetOptions::default()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "tag \"prod\" already points at revision \"stable\" (namespaces using it: shop); pass --overwrite to re-point it"
    );
    let overwrite = SetOptions { overwrite: true, ..SetOptions::default() };
    tag::set(&client, "prod", "canary", &overwrite).await.unwrap();
    let listed = tag::list_tags(&client).await.unwrap();
    assert_eq!(listed, [TagInfo { tag: "prod".into(), revision: "canary".into(), namespaces: vec!["shop".into()] }]);
}

#[tokio::test]
async fn remove_refuses_while_in_use_and_deletes_when_forced() {
    let (client, fake) = cluster_with(&["canary"]);
    tag::set(&client, "prod", "canary", &SetOptions::default()).await.unwrap();
    namespace(&fake, "shop", "prod");
    let err = tag::remove(&client, "prod", false).await.unwrap_err();
    assert!(matches!(&err, TagError::InUse { namespaces, .. } if namespaces == &["shop"]), "{err}");
    fake.clear_calls();
    tag::remove(&client, "prod", true).await.unwrap();
    let deletes: Vec<String> = fake.calls().iter().filter(|c| c.method == "DELETE").map(Call::line).collect();
    assert_eq!(deletes, [format!("DELETE {MWC}/istio-revision-tag-prod")]);
    let err = tag::remove(&client, "prod", true).await.unwrap_err();
    assert!(matches!(err, TagError::TagNotFound { .. }));
}

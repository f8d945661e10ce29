//! Properties of every render: objects decode into their k8s-openapi types, names follow the
//! revision rules, owner labels are everywhere, output is deterministic; plus the webhook
//! selector matrix, `--set` parsing, refused profiles and validation errors.

mod render_common;

use std::collections::BTreeSet;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use pretty_assertions::assert_eq;
use render_common::{CASES, Case, render_case, request};
use rudder_operator::manifest::{Manifest, RenderedObject};
use rudder_operator::render::tree::{Segment, parse_set};
use rudder_operator::render::{RenderError, RenderRequest, render};
use serde_json::{Value, json};

fn kind(obj: &RenderedObject) -> &str {
    obj.object.types.as_ref().map(|t| t.kind.as_str()).unwrap_or_default()
}

fn name(obj: &RenderedObject) -> &str {
    obj.object.metadata.name.as_deref().unwrap_or_default()
}

fn find<'a>(m: &'a Manifest, k: &str, n: &str) -> &'a RenderedObject {
    m.objects.iter().find(|o| kind(o) == k && name(o) == n).unwrap_or_else(|| panic!("no {k} {n}"))
}

fn typed_round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(value: &Value) -> Value {
    let typed: T = serde_json::from_value(value.clone()).expect("decodes into its type");
    serde_json::to_value(typed).expect("writes")
}

#[test]
fn every_object_decodes_into_its_kubernetes_type() {
    for case in CASES {
        for obj in render_case(case).objects {
            let value = serde_json::to_value(&obj.object).expect("write");
            let back = match kind(&obj) {
                "Namespace" => typed_round_trip::<Namespace>(&value),
                "CustomResourceDefinition" => typed_round_trip::<CustomResourceDefinition>(&value),
                "ServiceAccount" => typed_round_trip::<ServiceAccount>(&value),
                "ConfigMap" => typed_round_trip::<ConfigMap>(&value),
                "ClusterRole" => typed_round_trip::<ClusterRole>(&value),
                "ClusterRoleBinding" => typed_round_trip::<ClusterRoleBinding>(&value),
                "Role" => typed_round_trip::<Role>(&value),
                "RoleBinding" => typed_round_trip::<RoleBinding>(&value),
                "Service" => typed_round_trip::<Service>(&value),
                "Deployment" => typed_round_trip::<Deployment>(&value),
                "HorizontalPodAutoscaler" => typed_round_trip::<HorizontalPodAutoscaler>(&value),
                "PodDisruptionBudget" => typed_round_trip::<PodDisruptionBudget>(&value),
                "MutatingWebhookConfiguration" => typed_round_trip::<MutatingWebhookConfiguration>(&value),
                "ValidatingWebhookConfiguration" => typed_round_trip::<ValidatingWebhookConfiguration>(&value),
                other => panic!("{}: unexpected kind {other}", case.name),
            };
            assert_eq!(back, value, "{}: {} {} does not round-trip", case.name, kind(&obj), name(&obj));
        }
    }
}

#[test]
fn every_object_carries_the_owner_labels() {
    for case in CASES {
        let m = render_case(case);
        let rev = case.revision.unwrap_or("default");
        for obj in &m.objects {
            let labels = obj.object.metadata.labels.clone().unwrap_or_default();
            let get = |k: &str| labels.get(k).map(String::as_str);
            let what = format!("{}: {} {}", case.name, kind(obj), name(obj));
            assert_eq!(get("operator.istio.io/managed"), Some("Reconcile"), "{what}");
            assert_eq!(get("operator.istio.io/version"), Some(env!("CARGO_PKG_VERSION")), "{what}");
            assert_eq!(get("operator.istio.io/component"), Some(obj.component.label()), "{what}");
            assert_eq!(get("istio.io/rev"), Some(rev), "{what}");
            assert!(get("install.operator.istio.io/owning-resource").is_some(), "{what}");
            assert_eq!(get("install.operator.istio.io/owning-resource-namespace"), Some("istio-system"), "{what}");
        }
    }
    let named = CASES.iter().find(|c| c.name == "set-overrides").expect("case");
    for obj in render_case(named).objects {
        let labels = obj.object.metadata.labels.unwrap_or_default();
        assert_eq!(labels["install.operator.istio.io/owning-resource"], "control-plane");
    }
}

fn names(m: &Manifest) -> BTreeSet<String> {
    m.objects.iter().map(|o| format!("{} {}", kind(o), name(o))).collect()
}

#[test]
fn revision_changes_control_plane_names_but_not_gateways() {
    let table: &[(Option<&str>, &[&str])] = &[
        (
            None,
            &[
                "Deployment istiod",
                "Service istiod",
                "ServiceAccount istiod",
                "Role istiod",
                "RoleBinding istiod",
                "HorizontalPodAutoscaler istiod",
                "ConfigMap istio",
                "ConfigMap istio-sidecar-injector",
                "MutatingWebhookConfiguration istio-sidecar-injector",
                "ValidatingWebhookConfiguration istio-validator-istio-system",
                "ClusterRole istiod-clusterrole-istio-system",
                "ClusterRoleBinding istiod-gateway-controller-istio-system",
                "ClusterRole istio-reader-clusterrole-istio-system",
                "Deployment istio-ingressgateway",
                "Role istio-ingressgateway-sds",
            ],
        ),
        (
            Some("canary"),
            &[
                "Deployment istiod-canary",
                "Service istiod-canary",
                "ServiceAccount istiod-canary",
                "Role istiod-canary",
                "RoleBinding istiod-canary",
                "HorizontalPodAutoscaler istiod-canary",
                "ConfigMap istio-canary",
                "ConfigMap istio-sidecar-injector-canary",
                "MutatingWebhookConfiguration istio-sidecar-injector-canary",
                "ValidatingWebhookConfiguration istio-validator-canary-istio-system",
                "ClusterRole istiod-clusterrole-canary-istio-system",
                "ClusterRoleBinding istiod-gateway-controller-canary-istio-system",
                "ClusterRole istio-reader-clusterrole-canary-istio-system",
                "Deployment istio-ingressgateway",
                "Role istio-ingressgateway-sds",
            ],
        ),
    ];
    for (rev, expected) in table {
        let m =
            render(&RenderRequest { revision: rev.map(str::to_owned), ..RenderRequest::default() }).expect("render");
        let have = names(&m);
        for want in *expected {
            assert!(have.contains(*want), "revision {rev:?}: missing {want}");
        }
        let pod_labels = |dep: &str| {
            let d: Deployment =
                serde_json::from_value(serde_json::to_value(&find(&m, "Deployment", dep).object).expect("w"))
                    .expect("deployment");
            d.spec.template.metadata.and_then(|m| m.labels).unwrap_or_default()
        };
        let istiod = pod_labels(&rev.map_or("istiod".to_owned(), |r| format!("istiod-{r}")));
        assert_eq!(istiod["istio"], if rev.is_some() { "istiod" } else { "pilot" });
        assert_eq!(istiod["istio.io/rev"], rev.unwrap_or("default"));
        assert_eq!(istiod["sidecar.istio.io/inject"], "false");
        assert_eq!(pod_labels("istio-ingressgateway")["istio.io/rev"], rev.unwrap_or("default"));
    }
}

fn webhooks(m: &Manifest, name: &str) -> Vec<(String, Value, Value)> {
    let mwc: MutatingWebhookConfiguration =
        serde_json::from_value(serde_json::to_value(&find(m, "MutatingWebhookConfiguration", name).object).expect("w"))
            .expect("mwc");
    mwc.webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| {
            (
                w.name,
                serde_json::to_value(w.namespace_selector).expect("ns"),
                serde_json::to_value(w.object_selector).expect("obj"),
            )
        })
        .collect()
}

fn exprs(list: &[(&str, &str, &[&str])]) -> Value {
    let items: Vec<Value> = list
        .iter()
        .map(|(k, op, vals)| {
            if vals.is_empty() {
                json!({"key": k, "operator": op})
            } else {
                json!({"key": k, "operator": op, "values": vals})
            }
        })
        .collect();
    json!({"matchExpressions": items})
}

#[test]
fn injection_webhooks_follow_the_selector_matrix() {
    const REV: &str = "istio.io/rev";
    const INJ: &str = "istio-injection";
    const POD: &str = "sidecar.istio.io/inject";
    let rev_hooks = |r: &str| {
        vec![
            (
                "rev.namespace.sidecar-injector.istio.io".to_owned(),
                exprs(&[(REV, "In", &[r]), (INJ, "DoesNotExist", &[])]),
                exprs(&[(POD, "NotIn", &["false"])]),
            ),
            (
                "rev.object.sidecar-injector.istio.io".to_owned(),
                exprs(&[(REV, "DoesNotExist", &[]), (INJ, "DoesNotExist", &[])]),
                exprs(&[(POD, "NotIn", &["false"]), (REV, "In", &[r])]),
            ),
        ]
    };
    let mut default = rev_hooks("default");
    default.push((
        "namespace.sidecar-injector.istio.io".to_owned(),
        exprs(&[(INJ, "In", &["enabled"])]),
        exprs(&[(POD, "NotIn", &["false"])]),
    ));
    default.push((
        "object.sidecar-injector.istio.io".to_owned(),
        exprs(&[(INJ, "DoesNotExist", &[]), (REV, "DoesNotExist", &[])]),
        exprs(&[(POD, "In", &["true"]), (REV, "DoesNotExist", &[])]),
    ));
    let m = render(&RenderRequest::default()).expect("default");
    assert_eq!(webhooks(&m, "istio-sidecar-injector"), default);

    let m = render(&RenderRequest { revision: Some("canary".into()), ..RenderRequest::default() }).expect("canary");
    assert_eq!(webhooks(&m, "istio-sidecar-injector-canary"), rev_hooks("canary"));

    let auto = render(&RenderRequest {
        set: vec!["values.sidecarInjectorWebhook.enableNamespacesByDefault=true".into()],
        ..RenderRequest::default()
    })
    .expect("auto");
    let mut with_auto = default.clone();
    with_auto.push((
        "auto.sidecar-injector.istio.io".to_owned(),
        exprs(&[
            (INJ, "DoesNotExist", &[]),
            (REV, "DoesNotExist", &[]),
            (
                "kubernetes.io/metadata.name",
                "NotIn",
                &["kube-system", "kube-public", "kube-node-lease", "local-path-storage"],
            ),
        ]),
        exprs(&[(POD, "DoesNotExist", &[]), (REV, "DoesNotExist", &[])]),
    ));
    assert_eq!(webhooks(&auto, "istio-sidecar-injector"), with_auto);

    let other_ns =
        render(&RenderRequest { set: vec!["values.global.istioNamespace=mesh".into()], ..RenderRequest::default() })
            .expect("ns");
    assert_eq!(webhooks(&other_ns, "istio-sidecar-injector-mesh").len(), 4);
}

#[test]
fn injection_url_replaces_the_service_reference() {
    let case = CASES.iter().find(|c| c.name == "injection-url").expect("case");
    let m = render_case(case);
    let mwc =
        serde_json::to_value(&find(&m, "MutatingWebhookConfiguration", "istio-sidecar-injector").object).expect("w");
    for hook in mwc["webhooks"].as_array().expect("hooks") {
        // No bundle in the values: caBundle is left to whoever patches it in at run time.
        assert_eq!(hook["clientConfig"], json!({"url": "https://istiod.example.com:15017/inject"}));
    }
    assert!(!names(&m).contains("Deployment istiod"), "remote mode runs no local discovery server");
}

#[test]
fn injection_ca_bundle_comes_from_the_values_when_given() {
    let case = CASES.iter().find(|c| c.name == "injection-url").expect("case");
    let mut req = request(case);
    req.set.push("values.istiodRemote.injectionCABundle=PEM-TEXT".to_owned());
    let m = rudder_operator::render::render(&req).expect("renders");
    let mwc =
        serde_json::to_value(&find(&m, "MutatingWebhookConfiguration", "istio-sidecar-injector").object).expect("w");
    for hook in mwc["webhooks"].as_array().expect("hooks") {
        // ByteString serialises as base64: "PEM-TEXT" -> "UEVNLVRFWFQ=".
        assert_eq!(hook["clientConfig"]["caBundle"], json!("UEVNLVRFWFQ="));
    }
}

#[test]
fn rendering_is_deterministic() {
    for case in CASES {
        let a = render_case(case).to_yaml().expect("yaml");
        let b = render_case(case).to_yaml().expect("yaml");
        assert!(a == b, "{} renders differently twice", case.name);
    }
}

#[test]
fn apply_order_is_namespaces_then_crds_then_components() {
    let m = render_case(&CASES[1]);
    let kinds: Vec<&str> = m.objects.iter().map(kind).collect();
    assert_eq!(kinds[0], "Namespace");
    let last_crd = kinds.iter().rposition(|k| *k == "CustomResourceDefinition").expect("crds");
    assert!(kinds[1..=last_crd].iter().all(|k| *k == "CustomResourceDefinition"));
    let order: Vec<usize> = m.objects[last_crd + 1..]
        .iter()
        .map(|o| rudder_operator::manifest::Component::INSTALL_ORDER.iter().position(|c| *c == o.component).expect("c"))
        .collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "components out of order: {order:?}");
    let crds: Vec<&str> = m.objects.iter().filter(|o| kind(o) == "CustomResourceDefinition").map(name).collect();
    assert!(!crds.contains(&"istiooperators.install.istio.io"));
    assert_eq!(crds.len(), rudder_config::crds::all().len() - 1);
}

#[test]
fn ambient_and_unknown_profiles_are_refused() {
    for (profile, needle) in [
        ("ambient", "Rudder does not support"),
        ("openshift-ambient", "Rudder does not support"),
        ("stable", "unknown profile"),
    ] {
        let err = render(&RenderRequest { set: vec![format!("profile={profile}")], ..RenderRequest::default() })
            .expect_err(profile);
        assert!(matches!(err, RenderError::Profile(_)), "{profile}: {err}");
        assert!(err.to_string().contains(needle), "{profile}: {err}");
    }
}

#[test]
fn invalid_input_names_the_file_and_field() {
    let case = Case {
        name: "bad",
        files: &["spec:\n  components:\n    pilot:\n      k8s:\n        replicaCount: -1\n"],
        set: &[],
        revision: None,
    };
    let err = render(&request(&case)).expect_err("invalid");
    let text = err.to_string();
    assert!(text.contains("bad-0.yaml"), "{text}");
    assert!(text.contains("spec.components.pilot.k8s.replicaCount: replica count -1 must not be negative"), "{text}");
    let err = render(&RenderRequest { set: vec!["hub=".into()], ..RenderRequest::default() }).expect_err("empty hub");
    assert!(err.to_string().contains("spec.hub: hub must not be empty"), "{err}");
    let err = render(&RenderRequest { set: vec!["bogus=1".into()], ..RenderRequest::default() }).expect_err("unknown");
    assert!(err.to_string().contains("bogus"), "{err}");
}

#[test]
fn set_flags_parse_like_istioctl() {
    let key = |k: &str| Segment::Key(k.into());
    let table: Vec<(&str, Vec<Segment>, Value)> = vec![
        ("revision=canary", vec![key("revision")], json!("canary")),
        ("meshConfig.accessLogFile=/dev/stdout", vec![key("meshConfig"), key("accessLogFile")], json!("/dev/stdout")),
        ("values.global.hub=x", vec![key("values"), key("global"), key("hub")], json!("x")),
        (
            "components.egressGateways[0].enabled=true",
            vec![key("components"), key("egressGateways"), Segment::Index(0), key("enabled")],
            json!(true),
        ),
        (
            "components.ingressGateways[name:foo].k8s.replicaCount=2",
            vec![
                key("components"),
                key("ingressGateways"),
                Segment::Match { key: "name".into(), value: "foo".into() },
                key("k8s"),
                key("replicaCount"),
            ],
            json!(2),
        ),
        ("values.pilot.env.A=false", vec![key("values"), key("pilot"), key("env"), key("A")], json!(false)),
        ("tag=1.24.0", vec![key("tag")], json!("1.24.0")),
        ("a\\.b.c=x=y", vec![key("a.b"), key("c")], json!("x=y")),
    ];
    for (flag, path, value) in table {
        let parsed = parse_set(flag).unwrap_or_else(|e| panic!("{flag}: {e}"));
        assert_eq!((parsed.path, parsed.value), (path, value), "{flag}");
    }
    for bad in ["novalue", "a[x=1", "a.[].b=1", "=1"] {
        assert!(parse_set(bad).is_err(), "{bad} should not parse");
    }
}

#[test]
fn pdb_only_when_more_than_one_replica_is_guaranteed() {
    let render_with = |set: &[&str]| {
        names(
            &render(&RenderRequest { set: set.iter().map(|s| (*s).to_owned()).collect(), ..RenderRequest::default() })
                .expect("r"),
        )
    };
    assert!(!render_with(&[]).contains("PodDisruptionBudget istiod"));
    assert!(render_with(&["values.pilot.autoscaleMin=2"]).contains("PodDisruptionBudget istiod"));
    let fixed = render_with(&["values.pilot.autoscaleEnabled=false", "values.pilot.replicaCount=2"]);
    assert!(fixed.contains("PodDisruptionBudget istiod") && !fixed.contains("HorizontalPodAutoscaler istiod"));
}

#[test]
fn unused_values_are_noted_once() {
    let m = render(&RenderRequest {
        set: vec!["values.global.logging.level=debug".into(), "values.global.hub=x".into()],
        ..RenderRequest::default()
    })
    .expect("render");
    let unused: Vec<_> = m.notes.iter().filter(|n| n.contains("does not act on")).collect();
    assert_eq!(unused.len(), 1, "{unused:?}");
    assert!(unused[0].contains("values.global.logging.level"));
    let injector = find(&m, "ConfigMap", "istio-sidecar-injector");
    let values: Value =
        serde_json::from_str(injector.object.data["data"]["values"].as_str().expect("values")).expect("json");
    assert_eq!(values["global"]["logging"]["level"], "debug");
}

#[test]
fn user_values_win_over_translated_fields() {
    let m = render(&RenderRequest {
        set: vec![
            "hub=top.example".into(),
            "values.global.hub=values.example".into(),
            "meshConfig.accessLogFile=/a".into(),
        ],
        ..RenderRequest::default()
    })
    .expect("render");
    let yaml = m.to_yaml().expect("yaml");
    assert!(yaml.contains("image: values.example/rudder:"), "values.global.hub should win");
    assert!(yaml.contains("accessLogFile: /a"));
}

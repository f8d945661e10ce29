//! `operator init` / `remove`: the pure builders (names, labels, args, env per revision) and
//! apply/remove against the mocked API.

#![allow(clippy::unwrap_used)]

mod install_support;

use install_support::FakeApi;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::DynamicObject;
use pretty_assertions::assert_eq;
use rudder_operator::install::Progress;
use rudder_operator::install::apply::typed;
use rudder_operator::operator_init::{self, InitError, InitOptions, build};

fn opts(revision: Option<&str>, watched: &[&str]) -> InitOptions {
    InitOptions {
        revision: revision.map(str::to_owned),
        watched_namespaces: watched.iter().map(|s| (*s).to_owned()).collect(),
        ..InitOptions::default()
    }
}

fn summary(objects: &[DynamicObject]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            let kind = &o.types.as_ref().unwrap().kind;
            match o.namespace() {
                Some(ns) => format!("{kind} {ns}/{}", o.name_any()),
                None => format!("{kind} {}", o.name_any()),
            }
        })
        .collect()
}

fn deployment(o: &InitOptions) -> Deployment {
    let objects = build::objects(o).unwrap();
    let d = objects.iter().find(|o| o.types.as_ref().unwrap().kind == "Deployment").unwrap();
    typed(d).unwrap()
}

#[test]
fn creates_what_section_1_8_1_lists_in_apply_order() {
    let objects = build::objects(&InitOptions::default()).unwrap();
    assert_eq!(
        summary(&objects),
        [
            "Namespace istio-operator",
            "Namespace istio-system",
            "CustomResourceDefinition istiooperators.install.istio.io",
            "ServiceAccount istio-operator/istio-operator",
            "ClusterRole istio-operator",
            "ClusterRoleBinding istio-operator",
            "Deployment istio-operator/istio-operator",
            "Service istio-operator/istio-operator",
        ]
    );
}

#[test]
fn revision_suffixes_every_name_and_labels_the_revision() {
    let table = [
        (None, "istio-operator", "default"),
        (Some("default"), "istio-operator", "default"),
        (Some("canary"), "istio-operator-canary", "canary"),
    ];
    for (rev, name, label) in table {
        let objects = build::objects(&opts(rev, &["istio-system"])).unwrap();
        for o in objects.iter().skip(3) {
            assert_eq!(o.name_any(), name, "{rev:?}");
            assert_eq!(o.labels()["istio.io/rev"], label);
            assert_eq!(o.labels()["operator.istio.io/component"], "IstioOperator");
        }
    }
}

/// Revision, watched namespaces, expected args, expected `REVISION`.
type ArgsCase = (Option<&'static str>, &'static [&'static str], &'static [&'static str], &'static str);

#[test]
fn deployment_args_and_env_follow_the_flags() {
    let table: [ArgsCase; 3] = [
        (
            None,
            &["istio-system"],
            &["operator", "run", "--watched-namespaces", "istio-system", "--metrics-port", "8383"],
            "",
        ),
        (
            Some("canary"),
            &["istio-system", "team-a"],
            &[
                "operator",
                "run",
                "--watched-namespaces",
                "istio-system,team-a",
                "--revision",
                "canary",
                "--metrics-port",
                "8383",
            ],
            "canary",
        ),
        (Some("default"), &[], &["operator", "run", "--watched-namespaces", "", "--metrics-port", "8383"], ""),
    ];
    for (rev, watched, args, rev_env) in table {
        let d = deployment(&opts(rev, watched));
        let pod = d.spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.args.as_deref().unwrap(), args);
        let env: Vec<(String, String)> =
            c.env.clone().unwrap().into_iter().filter_map(|e| Some((e.name, e.value?))).collect();
        let want = [
            ("WATCH_NAMESPACE", watched.join(",")),
            ("LEADER_ELECTION_NAMESPACE", "istio-operator".to_owned()),
            ("REVISION", rev_env.to_owned()),
        ];
        assert_eq!(env, want.map(|(k, v)| (k.to_owned(), v)));
    }
}

#[test]
fn deployment_is_restricted_and_sized_as_istios() {
    let d = deployment(&InitOptions { hub: "example.io/x".into(), tag: "9.9".into(), ..InitOptions::default() });
    assert_eq!((d.spec.replicas, d.spec.revision_history_limit), (Some(1), Some(10)));
    let pod = d.spec.template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("example.io/x/rudder:9.9"));
    let sc = c.security_context.clone().unwrap();
    assert_eq!((sc.allow_privilege_escalation, sc.run_as_non_root), (Some(false), Some(true)));
    let res = c.resources.clone().unwrap();
    assert_eq!(res.requests.unwrap()["cpu"].0, "50m");
    assert_eq!(res.limits.unwrap()["memory"].0, "256Mi");
    assert_eq!(pod.service_account_name.as_deref(), Some("istio-operator"));
}

#[test]
fn bad_namespaces_and_crs_are_errors() {
    assert!(matches!(build::objects(&opts(None, &["Bad_NS"])), Err(InitError::BadNamespace(n)) if n == "Bad_NS"));
    let not_iop = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
    assert!(matches!(build::iop_objects("x.yaml", not_iop), Err(InitError::BadCr { .. })));
    let unnamed = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec: {}\n";
    assert!(build::iop_objects("x.yaml", unnamed).is_err());
}

#[test]
fn a_cr_in_another_namespace_gets_that_namespace_created_first() {
    let cr = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: cp, namespace: mesh}\nspec: {profile: demo}\n";
    let crs = build::iop_objects("cp.yaml", cr).unwrap();
    let all = build::init_objects(&InitOptions::default(), &crs).unwrap();
    let names = summary(&all);
    assert_eq!(&names[..3], ["Namespace istio-operator", "Namespace istio-system", "Namespace mesh"]);
    assert_eq!(names.last().unwrap(), "IstioOperator mesh/cp");
    let defaulted = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: cp}\n";
    assert_eq!(build::iop_objects("cp.yaml", defaulted).unwrap()[0].namespace().as_deref(), Some("istio-system"));
}

#[tokio::test]
async fn init_applies_everything_with_rudder_field_manager_and_rerun_upgrades_in_place() {
    let (client, fake) = FakeApi::start();
    let cr =
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: cp}\nspec: {profile: demo}\n";
    let crs = build::iop_objects("cp.yaml", cr).unwrap();
    let objects = build::init_objects(&opts(Some("canary"), &["istio-system"]), &crs).unwrap();
    operator_init::init(&client, &objects, &mut Progress::quiet()).await.unwrap();
    let calls = fake.calls();
    assert!(calls.iter().all(|c| c.is_apply() && c.field_manager.as_deref() == Some("rudder") && c.force));
    assert_eq!(
        calls.last().unwrap().line(),
        "PATCH /apis/install.istio.io/v1alpha1/namespaces/istio-system/istiooperators/cp"
    );
    assert!(fake.get("deployments", Some("istio-operator"), "istio-operator-canary").is_some());
    assert!(fake.get("customresourcedefinitions", None, "istiooperators.install.istio.io").is_some());

    fake.clear_calls();
    let upgraded =
        build::init_objects(&InitOptions { tag: "0.2.0".into(), ..opts(Some("canary"), &["istio-system"]) }, &[])
            .unwrap();
    operator_init::init(&client, &upgraded, &mut Progress::quiet()).await.unwrap();
    assert!(fake.calls().iter().all(|c| c.method == "PATCH"), "no deletes or creates: apply only");
    let d = fake.get("deployments", Some("istio-operator"), "istio-operator-canary").unwrap();
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "ghcr.io/rudder-mesh/rudder:0.2.0");
}

#[tokio::test]
async fn remove_takes_only_the_revisions_operator_objects_and_purge_takes_all() {
    let (client, fake) = FakeApi::start();
    for rev in [None, Some("canary")] {
        let objects = build::objects(&opts(rev, &["istio-system"])).unwrap();
        operator_init::init(&client, &objects, &mut Progress::quiet()).await.unwrap();
    }
    let keys = operator_init::plan_remove(&client, Some("canary")).await.unwrap();
    let shown: Vec<String> = keys.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "Deployment istio-operator/istio-operator-canary",
            "Service istio-operator/istio-operator-canary",
            "ClusterRoleBinding istio-operator-canary",
            "ClusterRole istio-operator-canary",
            "ServiceAccount istio-operator/istio-operator-canary",
        ]
    );
    operator_init::remove(&client, &keys, &mut Progress::quiet()).await.unwrap();
    assert_eq!(fake.names("deployments"), ["istio-operator/istio-operator"]);
    assert_eq!(fake.names("customresourcedefinitions"), ["istiooperators.install.istio.io"]);
    assert_eq!(fake.names("namespaces"), ["istio-operator", "istio-system"]);

    // --purge: the other revision's objects, then the CRD (no IstioOperator is left).
    let keys = operator_init::plan_remove(&client, None).await.unwrap();
    assert_eq!(keys.len(), 6);
    assert_eq!(keys.last().unwrap().to_string(), "CustomResourceDefinition istiooperators.install.istio.io");
    operator_init::remove(&client, &keys, &mut Progress::quiet()).await.unwrap();
    assert!(fake.names("clusterroles").is_empty());
    assert!(fake.names("customresourcedefinitions").is_empty());
}

//! Journey e on a real cluster (see `rudder_e2e::cluster`): `rudder install`, `verify-install`,
//! `uninstall --purge`, and `operator init` / `operator remove --purge`, each leaving the cluster
//! as it was found but for what is listed here (namespaces, which Rudder never deletes, as
//! istioctl).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rudder_e2e::cluster::{self, Cluster};

const RUDDER: &str = env!("CARGO_BIN_EXE_rudder");

/// The kinds whose objects are compared before and after.
const KINDS: &str = "namespaces,customresourcedefinitions,clusterroles,clusterrolebindings,\
mutatingwebhookconfigurations,validatingwebhookconfigurations,serviceaccounts,configmaps,secrets,\
services,deployments,daemonsets,statefulsets,roles,rolebindings,horizontalpodautoscalers,\
poddisruptionbudgets,leases,istiooperators";

fn rudder(cluster: &Cluster, args: &[&str]) -> (bool, String) {
    let out = cluster.command(RUDDER).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn must(cluster: &Cluster, args: &[&str]) -> String {
    let (ok, text) = rudder(cluster, args);
    assert!(ok, "rudder {}:\n{text}", args.join(" "));
    text
}

/// Every object of `KINDS` as `kind/namespace/name`; kube-system's and kube-node-lease's own
/// objects and leader-election Leases of the cluster's components are left out.
fn inventory(cluster: &Cluster) -> BTreeSet<String> {
    // CRDs come and go with the install: list the Istio kinds only when they exist.
    let crds = cluster.kubectl(&["get", "crd", "-o", "name"]).unwrap_or_default();
    let kinds = if crds.contains("istiooperators.install.istio.io") {
        KINDS.to_owned()
    } else {
        KINDS.trim_end_matches(",istiooperators").to_owned()
    };
    let text = cluster
        .kubectl(&[
            "get",
            &kinds,
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}",
        ])
        .unwrap();
    text.lines()
        .filter(|l| !l.is_empty())
        .filter(|l| !l.contains("/kube-system/") && !l.contains("/kube-node-lease/"))
        .filter(|l| !per_namespace_default(l))
        .map(str::to_owned)
        .collect()
}

fn diff(before: &BTreeSet<String>, after: &BTreeSet<String>) -> Vec<String> {
    let added = after.difference(before).map(|o| format!("+ {o}"));
    let removed = before.difference(after).map(|o| format!("- {o}"));
    added.chain(removed).collect()
}

fn wait_for(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => panic!("{what}: not within {timeout:?}; last seen: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// What a removal leaves: the namespaces, which Rudder never deletes (as istioctl).
fn namespace_leftovers(ns: &str) -> Vec<String> {
    vec![format!("+ Namespace//{ns}")]
}

/// What the cluster itself puts into every namespace.
fn per_namespace_default(object: &str) -> bool {
    ["ConfigMap/", "ServiceAccount/"].iter().any(|k| object.starts_with(k))
        && ["/kube-root-ca.crt", "/openshift-service-ca.crt", "/default"].iter().any(|n| object.ends_with(n))
}

/// Waits (up to 120 s) until the difference from `before` is `expected`; fails showing the
/// last difference and the state of any CustomResourceDefinition left (its deletion, finalizers
/// and conditions).
fn settles_to(cluster: &Cluster, before: &BTreeSet<String>, expected: Vec<String>, what: &str) {
    let expected = sorted(expected);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = sorted(diff(before, &inventory(cluster)));
        if now == expected {
            return;
        }
        if Instant::now() > deadline {
            let crds: Vec<String> = now
                .iter()
                .filter_map(|o| o.strip_prefix("+ CustomResourceDefinition//"))
                .map(|name| {
                    cluster
                        .kubectl(&[
                            "get",
                            "crd",
                            name,
                            "-o",
                            "jsonpath={.metadata.name} deleted={.metadata.deletionTimestamp} \
                             finalizers={.metadata.finalizers} conditions={.status.conditions}",
                        ])
                        .unwrap_or_else(|e| e.to_string())
                })
                .collect();
            panic!("{what}: left {now:?}, expected {expected:?}; {crds:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn install_verify_uninstall_and_operator_remove_leave_the_cluster_as_found() {
    let Some(cluster) = cluster::shared(RUDDER) else { return };
    let examples = format!("{}/../examples/operator/default.yaml", env!("CARGO_MANIFEST_DIR"));
    let before = inventory(cluster);

    let started = Instant::now();
    must(cluster, &["install", "-y", "-f", &examples]);
    println!("journey e: rudder install (ready) took {:.1} s", started.elapsed().as_secs_f64());
    let verified = must(cluster, &["verify-install", "-f", &examples]);
    println!("journey e: verify-install:\n{verified}");
    // The gateway's proxy belongs to the control plane being removed: it does not block.
    let removed = must(cluster, &["uninstall", "--purge", "-y"]);
    assert!(removed.contains("Uninstall complete"), "{removed}");
    wait_for("the control plane's pods are gone", Duration::from_secs(120), || {
        let pods = cluster.kubectl(&["get", "pods", "-n", "istio-system", "-o", "name"]).map_err(|e| e.to_string())?;
        if pods.trim().is_empty() { Ok(()) } else { Err(pods) }
    });
    // Deletions finish asynchronously (a CRD waits for its objects' cleanup): poll the inventory.
    settles_to(
        cluster,
        &before,
        namespace_leftovers("istio-system"),
        "rudder uninstall --purge leaves only the namespace",
    );

    must(cluster, &["operator", "init"]);
    let (ok, text) = rudder(cluster, &["operator", "remove", "--purge", "-y"]);
    assert!(ok, "operator remove --purge:\n{text}");
    wait_for("the operator's pods are gone", Duration::from_secs(120), || {
        let pods =
            cluster.kubectl(&["get", "pods", "-n", "istio-operator", "-o", "name"]).map_err(|e| e.to_string())?;
        if pods.trim().is_empty() { Ok(()) } else { Err(pods) }
    });
    let mut expected = namespace_leftovers("istio-system");
    expected.extend(namespace_leftovers("istio-operator"));
    settles_to(cluster, &before, expected, "rudder operator remove --purge leaves only the namespaces");
}

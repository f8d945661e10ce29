//! The renderer and the installer together: the real default and canary control planes installed
//! into the in-memory API, re-installed with nothing changed, and side by side.

#![allow(clippy::unwrap_used)]

mod install_support;

use std::time::Duration;

use install_support::{Call, FakeApi};
use pretty_assertions::assert_eq;
use rudder_operator::install::{InstallOptions, Progress, install};
use rudder_operator::manifest::Manifest;
use rudder_operator::render::{RenderRequest, render};

fn fast() -> InstallOptions {
    InstallOptions { poll_interval: Duration::from_millis(5), ..InstallOptions::default() }
}

fn rendered(revision: Option<&str>) -> Manifest {
    render(&RenderRequest { revision: revision.map(str::to_owned), ..RenderRequest::default() }).unwrap()
}

#[tokio::test]
async fn the_default_profile_installs_and_reinstalls_with_only_idempotent_applies() {
    let (client, fake) = FakeApi::start();
    let manifest = rendered(None);
    install(&client, &manifest, &fast(), &mut Progress::quiet()).await.unwrap();
    for object in &manifest.objects {
        let name = object.object.metadata.name.as_deref().unwrap();
        assert!(fake.calls().iter().any(|c| c.is_apply() && c.path.ends_with(&format!("/{name}"))), "{name} applied");
    }

    fake.clear_calls();
    let report = install(&client, &manifest, &fast(), &mut Progress::quiet()).await.unwrap();
    let calls = fake.calls();
    let writes: Vec<String> = calls.iter().filter(|c| !c.is_apply() && !c.is_list()).map(Call::line).collect();
    assert_eq!(writes, Vec::<String>::new(), "a re-install only applies and lists");
    assert!(report.pruned.is_empty());
    // Every rendered object once, plus the default tag's two webhook configurations.
    assert_eq!(calls.iter().filter(|c| c.is_apply()).count(), manifest.objects.len() + 2);
}

#[tokio::test]
async fn a_canary_installs_beside_the_default_without_pruning_it() {
    let (client, fake) = FakeApi::start();
    install(&client, &rendered(None), &fast(), &mut Progress::quiet()).await.unwrap();
    let canary = install(&client, &rendered(Some("canary")), &fast(), &mut Progress::quiet()).await.unwrap();
    assert!(canary.pruned.is_empty(), "the canary prunes nothing of the default revision: {:?}", canary.pruned);
    let deployments = fake.names("deployments");
    for name in ["istiod", "istiod-canary", "istio-ingressgateway"] {
        assert!(deployments.iter().any(|d| d == &format!("istio-system/{name}")), "{name} in {deployments:?}");
    }
    assert!(fake.get("configmaps", Some("istio-system"), "istio-sidecar-injector-canary").is_some());
}

//! `rudder analyze [-f PATH]... [-A | -n NS] [--use-kube[=true|false]]`: cross-object checks of
//! Istio configuration (`rudder_config::analyze`) plus each object's own validation (IST0106),
//! printed as istioctl prints them. Input: files (Istio objects, and the Services, Namespaces
//! and MutatingWebhookConfigurations among them), the cluster (every Istio object, Service,
//! Namespace and MutatingWebhookConfiguration), or both: files then stand in for the cluster's
//! objects of the same kind, namespace and name, so a change can be checked before it is
//! applied. The cluster is read unless only files are given (`--use-kube` decides otherwise).
//!
//! Exit codes: 0 nothing of Error level, 79 (istioctl's) errors found, 2 input unreadable.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client};
use rudder_config::analyze::{self, Inputs, Level, Message, NamespaceInfo};
use rudder_config::load::{self, Loads, Source};
use rudder_config::networking::{DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry};
use rudder_config::{Severity, Validate};
use serde_json::Value;

use super::install::{block_on, kube_client};

/// istioctl's exit code when analysis finds errors.
const ISSUES_FOUND: u8 = 79;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories to analyze (`-` reads stdin).
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Report on every namespace.
    #[arg(short = 'A', long = "all-namespaces")]
    all_namespaces: bool,
    /// Report on this namespace only (cluster-scoped objects are always reported).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Read the cluster (default: yes, unless only files are given).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    use_kube: Option<bool>,
}

pub fn run(args: &Args) -> ExitCode {
    match block_on(analyze_all(args)) {
        Ok(messages) => {
            for message in &messages {
                println!("{message}");
            }
            if messages.is_empty() {
                println!("✔ No validation issues found when analyzing {}.", scope(args));
            }
            if messages.iter().any(|m| m.level == Level::Error) {
                ExitCode::from(ISSUES_FOUND)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn scope(args: &Args) -> String {
    match (&args.namespace, args.all_namespaces) {
        (Some(ns), _) => format!("namespace: {ns}"),
        (None, true) => "all namespaces".into(),
        (None, false) if !args.files.is_empty() => {
            args.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
        }
        _ => "all namespaces".into(),
    }
}

async fn analyze_all(args: &Args) -> anyhow::Result<Vec<Message>> {
    let mut inputs = Inputs::default();
    let mut loads = Loads::default();
    if args.use_kube.unwrap_or(args.files.is_empty()) {
        from_cluster(&kube_client().await?, &mut inputs, &mut loads).await?;
    }
    let from_files = from_files(&args.files, &mut inputs)?;
    // Files stand in for the cluster's objects of the same identity.
    let replaced: BTreeSet<(String, Option<String>, Option<String>)> =
        from_files.objects.iter().map(|l| (l.id.kind.clone(), l.id.namespace.clone(), l.id.name.clone())).collect();
    loads.objects.retain(|l| !replaced.contains(&(l.id.kind.clone(), l.id.namespace.clone(), l.id.name.clone())));
    loads.objects.extend(from_files.objects);
    loads.problems.extend(from_files.problems);

    let mut messages = schema_messages(&loads);
    inputs.objects = loads.objects;
    messages.extend(analyze::analyze(&inputs));
    if let Some(ns) = &args.namespace {
        let suffix = format!(".{ns})");
        messages.retain(|m| {
            let cluster_scoped =
                ["Namespace ", "MutatingWebhookConfiguration "].iter().any(|k| m.resource.starts_with(k));
            cluster_scoped || format!("{})", m.resource).ends_with(&suffix)
        });
    }
    messages.sort();
    Ok(messages)
}

/// IST0106 for every object whose own validation fails, and for documents that do not decode.
fn schema_messages(loads: &Loads) -> Vec<Message> {
    let mut out = Vec::new();
    for loaded in &loads.objects {
        let id = &loaded.id;
        let resource = match &id.namespace {
            Some(ns) => format!("{} {}.{ns}", id.kind, id.name.as_deref().unwrap_or_default()),
            None => format!("{} {}", id.kind, id.name.as_deref().unwrap_or_default()),
        };
        for item in loaded.object.report().items.iter().filter(|i| i.severity == Severity::Error) {
            let at = if item.path.is_empty() { String::new() } else { format!("{}: ", item.path) };
            out.push(Message {
                level: Level::Error,
                code: "IST0106",
                resource: resource.clone(),
                text: format!("Schema validation error: {at}{}", item.message),
                origin: (loaded.source.file != "cluster").then(|| loaded.source.to_string()),
            });
        }
    }
    for problem in loads.problems.iter().filter(|p| p.is_error()) {
        out.push(Message {
            level: Level::Error,
            code: "IST0106",
            resource: "input".into(),
            text: format!("Schema validation error: {problem}"),
            origin: None,
        });
    }
    out
}

/// Istio objects of `paths`, and the Kubernetes objects analysis reads among them.
fn from_files(paths: &[PathBuf], inputs: &mut Inputs) -> anyhow::Result<Loads> {
    let mut loads = Loads::default();
    for path in paths {
        let files: Vec<(String, String)> = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading stdin")?;
            vec![("<stdin>".into(), text)]
        } else {
            let mut files = Vec::new();
            for file in load::files_under(path)? {
                let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                files.push((file.display().to_string(), text));
            }
            files
        };
        for (name, text) in files {
            for (i, doc) in load::documents(&name, &text)?.into_iter().enumerate() {
                let source = Source { file: name.clone(), doc: i + 1 };
                add_kubernetes(&doc, Some(source.to_string()), inputs);
                loads.add(source, doc);
            }
        }
    }
    // Kubernetes kinds are not Istio kinds: not problems here.
    loads.problems.retain(|p| p.is_error());
    Ok(loads)
}

/// Takes a Service, Namespace or MutatingWebhookConfiguration into `inputs`.
fn add_kubernetes(doc: &Value, origin: Option<String>, inputs: &mut Inputs) {
    let meta = &doc["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match (doc["apiVersion"].as_str(), doc["kind"].as_str()) {
        (Some("v1"), Some("Service")) => {
            let ns = meta["namespace"].as_str().unwrap_or("default");
            inputs.services.push(format!("{}.{ns}", text(&meta["name"])));
        }
        (Some("v1"), Some("Namespace")) => inputs.namespaces.push(NamespaceInfo {
            name: text(&meta["name"]),
            labels: serde_json::from_value(meta["labels"].clone()).unwrap_or_default(),
            origin,
        }),
        (Some("admissionregistration.k8s.io/v1"), Some("MutatingWebhookConfiguration")) => {
            if let Ok(config) = serde_json::from_value::<MutatingWebhookConfiguration>(doc.clone()) {
                inputs.webhooks.push((config, origin));
            }
        }
        _ => {}
    }
}

async fn from_cluster(client: &Client, inputs: &mut Inputs, loads: &mut Loads) -> anyhow::Result<()> {
    let list = ListParams::default();
    for service in Api::<Service>::all(client.clone()).list(&list).await.context("listing Services")? {
        let ns = service.metadata.namespace.unwrap_or_default();
        inputs.services.push(format!("{}.{ns}", service.metadata.name.unwrap_or_default()));
    }
    for ns in Api::<Namespace>::all(client.clone()).list(&list).await.context("listing Namespaces")? {
        inputs.namespaces.push(NamespaceInfo {
            name: ns.metadata.name.unwrap_or_default(),
            labels: ns.metadata.labels.unwrap_or_default(),
            origin: None,
        });
    }
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
    for config in webhooks.list(&list).await.context("listing MutatingWebhookConfigurations")? {
        inputs.webhooks.push((config, None));
    }
    let resources = [
        ApiResource::erase::<VirtualService>(&()),
        ApiResource::erase::<DestinationRule>(&()),
        ApiResource::erase::<Gateway>(&()),
        ApiResource::erase::<ServiceEntry>(&()),
        ApiResource::erase::<Sidecar>(&()),
        ApiResource::erase::<WorkloadEntry>(&()),
    ];
    for resource in resources {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let objects = match api.list(&list).await {
            Ok(objects) => objects,
            // A cluster without the Istio CRDs has none of these.
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", resource.plural)),
        };
        for (i, object) in objects.into_iter().enumerate() {
            let mut value = serde_json::to_value(&object)?;
            value["apiVersion"] = Value::String(resource.api_version.clone());
            value["kind"] = Value::String(resource.kind.clone());
            loads.add(Source { file: "cluster".into(), doc: i + 1 }, value);
        }
    }
    Ok(())
}

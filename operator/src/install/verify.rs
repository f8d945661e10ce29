//! verify-install: does every rendered object exist, and is every Deployment ready? A pure
//! [`verify`] over what the shell fetched, and a table for people.

use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;

use super::InstallError;
use super::apply::{api_for, typed};
use super::plan::{ObjectKey, PlannedObject};
use super::wait::deployment_pending;

/// One checked object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub key: ObjectKey,
    pub status: Status,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Exists (and, for a Deployment, is ready).
    Ok,
    Missing,
    NotReady(String),
}

impl Status {
    fn text(&self) -> String {
        match self {
            Status::Ok => "ok".to_owned(),
            Status::Missing => "missing".to_owned(),
            Status::NotReady(why) => format!("not ready: {why}"),
        }
    }
}

/// What the cluster holds for one wanted object: nothing, or the object (typed if a Deployment).
#[derive(Clone, Debug)]
pub enum Found {
    Absent,
    Present,
    Deployment(Box<Deployment>),
}

/// The status of each wanted object.
pub fn verify(found: &[(ObjectKey, Found)]) -> Vec<Row> {
    found
        .iter()
        .map(|(key, f)| {
            let status = match f {
                Found::Absent => Status::Missing,
                Found::Present => Status::Ok,
                Found::Deployment(d) => deployment_pending(d).map_or(Status::Ok, Status::NotReady),
            };
            Row { key: key.clone(), status }
        })
        .collect()
}

/// Whether every row is fine.
pub fn all_ok(rows: &[Row]) -> bool {
    rows.iter().all(|r| r.status == Status::Ok)
}

/// A fixed-width table: KIND, NAMESPACE, NAME, STATUS.
pub fn table(rows: &[Row]) -> String {
    let width = |f: &dyn Fn(&Row) -> usize, head: &str| rows.iter().map(f).max().unwrap_or(0).max(head.len());
    let wk = width(&|r| r.key.kind.len(), "KIND");
    let wn = width(&|r| r.key.namespace.as_deref().unwrap_or("-").len(), "NAMESPACE");
    let wm = width(&|r| r.key.name.len(), "NAME");
    let mut out = format!("{:wk$}  {:wn$}  {:wm$}  STATUS\n", "KIND", "NAMESPACE", "NAME");
    for r in rows {
        let ns = r.key.namespace.as_deref().unwrap_or("-");
        let _ = writeln!(out, "{:wk$}  {ns:wn$}  {:wm$}  {}", r.key.kind, r.key.name, r.status.text());
    }
    out
}

/// Fetches every planned object (one GET each) and checks it.
pub async fn check(client: &Client, planned: &[PlannedObject]) -> Result<Vec<Row>, InstallError> {
    let mut found = Vec::with_capacity(planned.len());
    for p in planned {
        let api = api_for(client, p.info, p.key.namespace.as_deref());
        let got = api.get_opt(&p.key.name).await.map_err(|e| InstallError::kube("get", &p.key, e))?;
        let f = match got {
            None => Found::Absent,
            Some(obj) if p.info.kind == "Deployment" => Found::Deployment(Box::new(typed(&obj)?)),
            Some(_) => Found::Present,
        };
        found.push((p.key.clone(), f));
    }
    Ok(verify(&found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_missing_and_unready() {
        let key = |kind: &str, ns: Option<&str>, name: &str| ObjectKey {
            kind: kind.into(),
            namespace: ns.map(Into::into),
            name: name.into(),
        };
        let rows = verify(&[
            (key("CustomResourceDefinition", None, "gateways.networking.istio.io"), Found::Present),
            (key("ConfigMap", Some("istio-system"), "istio"), Found::Absent),
            (key("Deployment", Some("istio-system"), "istiod"), Found::Deployment(Box::default())),
        ]);
        assert!(!all_ok(&rows));
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(
            lines,
            [
                "KIND                      NAMESPACE     NAME                          STATUS",
                "CustomResourceDefinition  -             gateways.networking.istio.io  ok",
                "ConfigMap                 istio-system  istio                         missing",
                "Deployment                istio-system  istiod                        not ready: no status yet",
            ]
        );
    }
}

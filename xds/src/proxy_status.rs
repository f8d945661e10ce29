//! What `rudder proxy-status` shows: discovery's `/debug/syncz` read into one sync state per
//! proxy and resource type, as istioctl's proxy-status presents istiod's: SYNCED (the proxy
//! acknowledged the last response), NOT SENT (it watches the type but nothing was sent yet),
//! STALE (a response is not acknowledged yet, or was rejected: then with Envoy's message).
//! Pure: JSON in, rows and text out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// The types shown as columns, in istioctl's order, with their column titles.
const COLUMNS: [(&str, &str); 5] = [("cds", "CDS"), ("lds", "LDS"), ("eds", "EDS"), ("rds", "RDS"), ("sds", "SDS")];

/// The sync state of one type of one proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncState {
    Synced,
    NotSent,
    Stale,
    /// The proxy rejected the last response (NACK); its message.
    Rejected(String),
}

impl SyncState {
    fn label(&self) -> &'static str {
        match self {
            SyncState::Synced => "SYNCED",
            SyncState::NotSent => "NOT SENT",
            SyncState::Stale | SyncState::Rejected(_) => "STALE",
        }
    }
}

/// One type's bookkeeping as discovery reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeStatus {
    pub state: SyncState,
    pub version_sent: String,
    pub version_acked: String,
    pub nonce_sent: String,
    pub nonce_acked: String,
    pub nacks: u64,
}

/// One connected proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyStatus {
    /// `<pod>.<namespace>`.
    pub name: String,
    /// The full node id (`sidecar~10.1.0.5~pod.ns~ns.svc.cluster.local`).
    pub node: String,
    /// `sidecar` or `router`.
    pub kind: String,
    /// Which discovery instance it is connected to (a pod name, or the address asked).
    pub discovery: String,
    /// By short type name (`cds`, `lds`, …); only the types the proxy watches.
    pub types: BTreeMap<String, TypeStatus>,
}

/// The proxies of one `/debug/syncz` answer. A proxy's streams (Envoy's ADS and its agent's
/// name-table stream) are one row. `Err` names what did not have the expected shape.
pub fn from_syncz(syncz: &Value, discovery: &str) -> Result<Vec<ProxyStatus>, String> {
    let proxies = syncz.as_array().ok_or("syncz: expected a JSON array of proxies")?;
    let mut out: Vec<ProxyStatus> = Vec::new();
    for (i, proxy) in proxies.iter().enumerate() {
        let node = proxy["proxy"].as_str().ok_or_else(|| format!("syncz[{i}].proxy: expected the node id"))?;
        let parts: Vec<&str> = node.split('~').collect();
        let (kind, name) = match parts.as_slice() {
            [kind, _, name, _] => ((*kind).to_owned(), (*name).to_owned()),
            _ => (String::new(), node.to_owned()),
        };
        let mut types = BTreeMap::new();
        if let Some(watched) = proxy["types"].as_object() {
            for (short, watch) in watched {
                types.insert(short.clone(), type_status(watch));
            }
        }
        match out.iter_mut().find(|p| p.node == node) {
            Some(seen) => seen.types.extend(types),
            None => out.push(ProxyStatus { name, node: node.to_owned(), kind, discovery: discovery.to_owned(), types }),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn type_status(watch: &Value) -> TypeStatus {
    let text = |key: &str| watch[key].as_str().unwrap_or_default().to_owned();
    let (nonce_sent, nonce_acked) = (text("nonce_sent"), text("nonce_acked"));
    let state = match watch["last_error"].as_str() {
        Some(message) => SyncState::Rejected(message.to_owned()),
        None if nonce_sent.is_empty() => SyncState::NotSent,
        None if nonce_sent == nonce_acked => SyncState::Synced,
        None => SyncState::Stale,
    };
    TypeStatus {
        state,
        version_sent: text("version_sent"),
        version_acked: text("version_acked"),
        nonce_sent,
        nonce_acked,
        nacks: watch["nacks"].as_u64().unwrap_or(0),
    }
}

/// The table of every proxy: one row each, a column per type (`-` for a type it does not
/// watch), then each rejection's message.
pub fn table(proxies: &[ProxyStatus]) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        ["NAME", "TYPE"]
            .into_iter()
            .map(str::to_owned)
            .chain(COLUMNS.iter().map(|(_, title)| (*title).to_owned()))
            .chain(["DISCOVERY".to_owned()])
            .collect(),
    ];
    for proxy in proxies {
        let mut row = vec![proxy.name.clone(), proxy.kind.clone()];
        for (short, _) in COLUMNS {
            row.push(proxy.types.get(short).map_or("-", |t| t.state.label()).to_owned());
        }
        row.push(proxy.discovery.clone());
        rows.push(row);
    }
    let mut out = aligned(&rows);
    for proxy in proxies {
        for (short, status) in &proxy.types {
            if let SyncState::Rejected(message) = &status.state {
                let _ = writeln!(out, "{} {}: rejected: {message}", proxy.name, short.to_uppercase());
            }
        }
    }
    out
}

/// One proxy in detail: per type, the state, versions and nonces sent and acknowledged, the
/// NACK count and the last rejection.
pub fn detail(proxy: &ProxyStatus) -> String {
    let mut out = format!("{} ({}), connected to {}\n", proxy.name, proxy.node, proxy.discovery);
    let mut rows = vec![
        ["TYPE", "STATE", "VERSION SENT", "VERSION ACKED", "NONCE SENT", "NONCE ACKED", "NACKS"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for (short, status) in &proxy.types {
        rows.push(vec![
            short.to_uppercase(),
            status.state.label().to_owned(),
            status.version_sent.clone(),
            status.version_acked.clone(),
            status.nonce_sent.clone(),
            status.nonce_acked.clone(),
            status.nacks.to_string(),
        ]);
    }
    out.push_str(&aligned(&rows));
    for (short, status) in &proxy.types {
        if let SyncState::Rejected(message) = &status.state {
            let _ = writeln!(out, "{}: rejected: {message}", short.to_uppercase());
        }
    }
    out
}

/// The proxies whose name (`pod.namespace`), pod name or node id is `wanted`.
pub fn find<'p>(proxies: &'p [ProxyStatus], wanted: &str) -> Vec<&'p ProxyStatus> {
    proxies
        .iter()
        .filter(|p| p.name == wanted || p.node == wanted || p.name.split('.').next() == Some(wanted))
        .collect()
}

/// Rows as columns separated by three spaces, each as wide as its widest cell.
pub fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}   ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn syncz() -> Value {
        json!([
            {"proxy": "sidecar~10.1.0.5~sleep-1.apps~apps.svc.cluster.local", "types": {
                "cds": {"nonce_sent": "3", "nonce_acked": "3", "version_sent": "v1", "version_acked": "v1", "nacks": 0},
                "lds": {"nonce_sent": "5", "nonce_acked": "4", "version_sent": "v2", "version_acked": "v1",
                        "last_error": "Error adding/updating listener(s) 10.1.0.5_80: cannot bind", "nacks": 1},
                "eds": {"nonce_sent": "7", "nonce_acked": "6", "nacks": 0},
                "rds": {"nonce_sent": "", "nonce_acked": "", "nacks": 0}
            }},
            {"proxy": "sidecar~10.1.0.5~sleep-1.apps~apps.svc.cluster.local", "types": {
                "nds": {"nonce_sent": "1", "nonce_acked": "1", "nacks": 0}
            }},
            {"proxy": "router~10.1.0.9~ingress-1.istio-system~istio-system.svc.cluster.local", "types": {
                "sds": {"nonce_sent": "2", "nonce_acked": "2", "nacks": 0}
            }}
        ])
    }

    #[test]
    fn states_follow_nonces_and_rejections() {
        let proxies = from_syncz(&syncz(), "istiod-1").unwrap();
        assert_eq!(
            proxies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["ingress-1.istio-system", "sleep-1.apps"]
        );
        let sleep = &proxies[1];
        assert_eq!(sleep.kind, "sidecar");
        let states: Vec<(&str, &SyncState)> = sleep.types.iter().map(|(k, t)| (k.as_str(), &t.state)).collect();
        assert_eq!(
            states,
            [
                ("cds", &SyncState::Synced),
                ("eds", &SyncState::Stale),
                ("lds", &SyncState::Rejected("Error adding/updating listener(s) 10.1.0.5_80: cannot bind".into())),
                ("nds", &SyncState::Synced),
                ("rds", &SyncState::NotSent),
            ]
        );
        assert!(from_syncz(&json!({"not": "a list"}), "x").unwrap_err().contains("array"));
        assert!(from_syncz(&json!([{"types": {}}]), "x").unwrap_err().contains("syncz[0].proxy"));
    }

    #[test]
    fn the_table_has_a_column_per_type_and_lists_rejections() {
        let proxies = from_syncz(&syncz(), "istiod-1").unwrap();
        let text = table(&proxies);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAME", "TYPE", "CDS", "LDS", "EDS", "RDS", "SDS", "DISCOVERY"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["ingress-1.istio-system", "router", "-", "-", "-", "-", "SYNCED", "istiod-1"]
        );
        assert_eq!(
            lines[2].split("   ").map(str::trim).filter(|c| !c.is_empty()).collect::<Vec<_>>(),
            ["sleep-1.apps", "sidecar", "SYNCED", "STALE", "STALE", "NOT SENT", "-", "istiod-1"]
        );
        assert_eq!(lines[3], "sleep-1.apps LDS: rejected: Error adding/updating listener(s) 10.1.0.5_80: cannot bind");
        let one = detail(find(&proxies, "sleep-1").first().unwrap());
        assert!(one.contains("LDS    STALE") && one.contains("LDS: rejected: Error adding"), "{one}");
        assert_eq!(find(&proxies, "sleep-1.apps").len(), 1);
        assert!(find(&proxies, "nobody").is_empty());
    }
}

//! `exportTo` lists, shared by VirtualService, DestinationRule, ServiceEntry and the mesh-wide
//! defaults.

use std::collections::BTreeMap;

use super::{FieldPath, Report, checks};

/// Checks an `exportTo` list: each entry is `.`, `*`, a namespace name, or `~` where
/// `allow_none` (ServiceEntry and the mesh defaults); no entry twice (`.` counts as the object's
/// own `namespace` when known); `*` and `~` only alone.
pub fn export_to(report: &mut Report, at: &FieldPath, entries: &[String], namespace: Option<&str>, allow_none: bool) {
    // Each valid entry by the namespace it stands for, with the spelling first seen.
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let here = at.index(i);
        let key = match (entry.as_str(), namespace) {
            (".", Some(ns)) => ns,
            (other, _) => other,
        };
        if let Some(first) = seen.get(key) {
            if *first == entry {
                report.error(&here, format!("duplicate exportTo entry {entry:?}"));
            } else {
                report.error(
                    &here,
                    format!("duplicate exportTo entry: \".\" and the own namespace {key:?} are the same"),
                );
            }
            continue;
        }
        let valid = match entry.as_str() {
            "." | "*" => true,
            "~" if allow_none => true,
            "~" => {
                report.error(
                    &here,
                    "exportTo \"~\" is only allowed for ServiceEntry; use \".\" to keep the rule private",
                );
                false
            }
            other if checks::dns1123_label(other).is_err() => {
                report.error(
                    &here,
                    format!(
                        "exportTo entry {other:?} is invalid; use \".\", \"*\"{} or a namespace name",
                        if allow_none { ", \"~\"" } else { "" }
                    ),
                );
                false
            }
            _ => true,
        };
        if valid {
            seen.insert(key, entry);
        }
    }
    if entries.len() > 1 {
        if seen.contains_key("*") {
            report.error(at, "\"*\" exports to every namespace and cannot be combined with other entries");
        }
        if seen.contains_key("~") {
            report.error(at, "\"~\" exports to no namespace and cannot be combined with other entries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(entries: &[&str], namespace: Option<&str>, allow_none: bool) -> Vec<String> {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        let mut report = Report::default();
        export_to(&mut report, &FieldPath::new("exportTo"), &entries, namespace, allow_none);
        report.items.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn export_to_rules() {
        assert_eq!(errors(&["*"], Some("ns1"), false), Vec::<String>::new());
        assert_eq!(errors(&["~"], Some("ns1"), true), Vec::<String>::new());
        assert_eq!(errors(&[".", "ns2"], None, false), Vec::<String>::new());
        assert_eq!(
            errors(&["~", "ns2"], Some("ns1"), false),
            vec!["exportTo[0]: exportTo \"~\" is only allowed for ServiceEntry; use \".\" to keep the rule private"]
        );
        assert_eq!(
            errors(&["~", "ns2"], Some("ns1"), true),
            vec!["exportTo: \"~\" exports to no namespace and cannot be combined with other entries"]
        );
        assert_eq!(
            errors(&[".", "ns1", "."], Some("ns1"), false),
            vec![
                "exportTo[1]: duplicate exportTo entry: \".\" and the own namespace \"ns1\" are the same",
                "exportTo[2]: duplicate exportTo entry \".\"",
            ]
        );
        assert_eq!(
            errors(&["Bad_NS", "*"], None, false),
            vec![
                "exportTo[0]: exportTo entry \"Bad_NS\" is invalid; use \".\", \"*\" or a namespace name",
                "exportTo: \"*\" exports to every namespace and cannot be combined with other entries",
            ]
        );
    }
}

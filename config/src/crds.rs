//! The CustomResourceDefinitions for every kind in [`crate::object::KINDS`], as the API server
//! should get them: each kind served at all of its upstream versions with one schema, the
//! `IstioOperator` schema left open (`x-kubernetes-preserve-unknown-fields`, as upstream, since
//! the operator validates it), and a check that every schema is structural.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceValidation, JSONSchemaProps,
};
use serde_json::Value;

use crate::object::{IstioObject, KINDS};

/// Every CRD, in registry order.
pub fn all() -> Vec<CustomResourceDefinition> {
    IstioObject::derived_crds()
        .into_iter()
        .zip(KINDS)
        .map(|(mut crd, info)| {
            let template = crd.spec.versions.first().cloned().unwrap_or_default();
            crd.spec.versions = info
                .versions
                .iter()
                .map(|version| {
                    let mut v = template.clone();
                    v.name = (*version).to_owned();
                    v.served = true;
                    v.storage = *version == info.storage_version;
                    v
                })
                .collect();
            if info.kind == "IstioOperator" {
                for v in &mut crd.spec.versions {
                    v.schema = Some(CustomResourceValidation {
                        open_api_v3_schema: Some(open_schema()),
                    });
                }
            }
            crd
        })
        .collect()
}

/// All CRDs grouped by API group (one file per group in `chart/crds/`).
pub fn by_group() -> BTreeMap<String, Vec<CustomResourceDefinition>> {
    let mut groups: BTreeMap<String, Vec<CustomResourceDefinition>> = BTreeMap::new();
    for crd in all() {
        groups.entry(crd.spec.group.clone()).or_default().push(crd);
    }
    groups
}

/// Renders CRDs as one YAML stream.
pub fn to_yaml(crds: &[CustomResourceDefinition]) -> Result<String, String> {
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(crd).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn open_schema() -> JSONSchemaProps {
    JSONSchemaProps {
        type_: Some("object".into()),
        x_kubernetes_preserve_unknown_fields: Some(true),
        ..Default::default()
    }
}

/// The reasons a CRD schema is not structural, as the API server would refuse it; empty when
/// the schema is structural.
pub fn structural_problems(crd: &CustomResourceDefinition) -> Vec<String> {
    let mut problems = Vec::new();
    for version in &crd.spec.versions {
        let at = format!("{}/{}", crd.spec.names.kind, version.name);
        match version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
        {
            None => problems.push(format!("{at}: no openAPIV3Schema")),
            Some(schema) => match serde_json::to_value(schema) {
                Ok(value) => check_node(&value, &at, false, &mut problems),
                Err(e) => problems.push(format!("{at}: {e}")),
            },
        }
    }
    problems
}

const JUNCTORS: [&str; 4] = ["allOf", "anyOf", "oneOf", "not"];
/// Keywords that only the skeleton may carry, never a schema inside a junctor.
const SKELETON_ONLY: [&str; 7] = [
    "type",
    "description",
    "default",
    "additionalProperties",
    "nullable",
    "title",
    "x-kubernetes-preserve-unknown-fields",
];

fn check_node(node: &Value, at: &str, in_junctor: bool, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        problems.push(format!("{at}: schema is not an object"));
        return;
    };
    if map.contains_key("$ref") || map.contains_key("definitions") || map.contains_key("$defs") {
        problems.push(format!("{at}: $ref/definitions are not allowed"));
    }
    let open = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if in_junctor {
        for key in SKELETON_ONLY {
            if map.contains_key(key) {
                problems.push(format!(
                    "{at}: {key} is not allowed inside allOf/anyOf/oneOf/not"
                ));
            }
        }
    } else if !map.contains_key("type") && !open && !int_or_string {
        problems.push(format!("{at}: type is missing"));
    }
    if map.contains_key("properties")
        && map
            .get("additionalProperties")
            .is_some_and(|a| a != &Value::Bool(false))
    {
        problems.push(format!(
            "{at}: properties and additionalProperties together"
        ));
    }
    if let Some(items) = map.get("items") {
        if items.is_array() {
            problems.push(format!("{at}.items: must be one schema, not a list"));
        } else {
            check_node(items, &format!("{at}.items"), in_junctor, problems);
        }
    }
    if let Some(Value::Object(props)) = map.get("properties") {
        for (name, prop) in props {
            check_node(prop, &format!("{at}.{name}"), in_junctor, problems);
        }
    }
    if let Some(extra @ Value::Object(_)) = map.get("additionalProperties") {
        check_node(
            extra,
            &format!("{at}.additionalProperties"),
            in_junctor,
            problems,
        );
    }
    for junctor in JUNCTORS {
        let Some(inner) = map.get(junctor) else {
            continue;
        };
        let branches: Vec<&Value> = match inner {
            Value::Array(list) => list.iter().collect(),
            single => vec![single],
        };
        for (i, branch) in branches.into_iter().enumerate() {
            let branch_at = format!("{at}.{junctor}[{i}]");
            // int-or-string may say anyOf: [{type: integer}, {type: string}].
            if int_or_string && junctor == "anyOf" {
                continue;
            }
            check_node(branch, &branch_at, true, problems);
            // Every property named in a junctor must also be in the skeleton.
            if let (Some(Value::Object(props)), Some(Value::Object(skeleton))) =
                (branch.get("properties"), map.get("properties"))
            {
                for name in props.keys().filter(|n| !skeleton.contains_key(*n)) {
                    problems.push(format!(
                        "{branch_at}: property {name} is not in the enclosing schema"
                    ));
                }
            } else if branch.get("properties").is_some() && !map.contains_key("properties") {
                problems.push(format!(
                    "{branch_at}: properties inside a junctor with none outside"
                ));
            }
        }
    }
}

//! The sidecar injector's `config` (key `config` of ConfigMap `istio-sidecar-injector[-<rev>]`):
//! the default policy, the selector exceptions and the named pod templates.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The name of the template applied when nothing else is asked for.
pub const SIDECAR_TEMPLATE: &str = "sidecar";

/// Whether pods are injected when neither they nor a selector say otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InjectionPolicy {
    /// Inject unless the pod opts out.
    #[default]
    Enabled,
    /// Inject only pods that opt in.
    Disabled,
}

/// The injector's `config` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InjectorConfig {
    /// Default decision (`enabled` when absent, as the chart renders it).
    #[serde(default)]
    pub policy: InjectionPolicy,
    /// Pods matching any of these are injected unless they opt out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub always_inject_selector: Vec<LabelSelector>,
    /// Pods matching any of these are not injected unless they opt in (wins over always).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub never_inject_selector: Vec<LabelSelector>,
    /// Annotations added to every injected pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub injected_annotations: BTreeMap<String, String>,
    /// Templates applied when the pod does not name any (`["sidecar"]` when absent or empty).
    #[serde(
        default = "default_templates",
        deserialize_with = "templates_or_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub default_templates: Vec<String>,
    /// Template name to Go-template text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub templates: BTreeMap<String, String>,
    /// Template name standing for several templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Legacy single template; kept so old ConfigMaps load, never read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template: String,
}

fn default_templates() -> Vec<String> {
    vec![SIDECAR_TEMPLATE.to_owned()]
}

fn templates_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Option::<Vec<String>>::deserialize(d)?.unwrap_or_default();
    Ok(if names.is_empty() { default_templates() } else { names })
}

impl Default for InjectorConfig {
    fn default() -> Self {
        Self {
            policy: InjectionPolicy::Enabled,
            always_inject_selector: Vec::new(),
            never_inject_selector: Vec::new(),
            injected_annotations: BTreeMap::new(),
            default_templates: default_templates(),
            templates: BTreeMap::new(),
            aliases: BTreeMap::new(),
            template: String::new(),
        }
    }
}

impl InjectorConfig {
    /// Reads the `config` text (YAML or JSON). An empty document gives the defaults. Errors name
    /// the field that does not fit, e.g. `policy: unknown variant ...` or an unknown key.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let value: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|e| format!("injector config is not valid YAML: {e}"))?;
        if value.is_null() {
            return Ok(Self::default());
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            if path == "." { message } else { format!("{path}: {message}") }
        })
    }

    /// The templates to apply for the requested names (the pod's `inject.istio.io/templates`
    /// list, or [`Self::default_templates`] when `None`), with aliases expanded, in order and
    /// without repeats. Unknown names are an error.
    pub fn expand_templates(&self, requested: Option<&[String]>) -> Result<Vec<String>, String> {
        let names = requested.unwrap_or(&self.default_templates);
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for name in names {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            let expanded: Vec<&str> = match self.aliases.get(name) {
                Some(targets) => targets.iter().map(String::as_str).collect(),
                None => vec![name],
            };
            for template in expanded {
                if !self.templates.contains_key(template) {
                    return Err(format!(
                        "unknown injection template {template:?}; known templates: {}",
                        self.templates.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
                if seen.insert(template.to_owned()) {
                    out.push(template.to_owned());
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_defaults() {
        let config = InjectorConfig::from_yaml("").expect("empty");
        assert_eq!(config, InjectorConfig::default());
        assert_eq!(config.policy, InjectionPolicy::Enabled);
        assert_eq!(config.default_templates, vec!["sidecar".to_owned()]);
        let config = InjectorConfig::from_yaml("defaultTemplates: []\n").expect("empty list");
        assert_eq!(config.default_templates, vec!["sidecar".to_owned()]);
    }

    #[test]
    fn reads_a_chart_like_config() {
        let text = r#"
policy: disabled
alwaysInjectSelector:
  - matchLabels: {always: "yes"}
neverInjectSelector:
  - matchExpressions:
      - {key: openshift.io/build.name, operator: Exists}
injectedAnnotations:
  example.com/injected: "true"
defaultTemplates: [sidecar, extra]
aliases:
  both: [sidecar, extra]
templates:
  sidecar: |
    spec:
      containers: []
  extra: "metadata: {}"
"#;
        let config = InjectorConfig::from_yaml(text).expect("valid");
        assert_eq!(config.policy, InjectionPolicy::Disabled);
        assert_eq!(config.always_inject_selector.len(), 1);
        assert_eq!(config.never_inject_selector.len(), 1);
        assert_eq!(config.templates.len(), 2);
        assert_eq!(config.expand_templates(None).expect("defaults"), vec!["sidecar".to_owned(), "extra".to_owned()]);
        assert_eq!(
            config.expand_templates(Some(&["both".to_owned(), "sidecar".to_owned()])).expect("alias"),
            vec!["sidecar".to_owned(), "extra".to_owned()]
        );
        let err = config.expand_templates(Some(&["gateway".to_owned()])).expect_err("unknown");
        assert!(err.contains("unknown injection template \"gateway\""), "{err}");
        let back: InjectorConfig = serde_json::from_value(serde_json::to_value(&config).expect("write")).expect("read");
        assert_eq!(back, config);
    }

    #[test]
    fn errors_name_the_field() {
        let err = InjectorConfig::from_yaml("policy: enabled\nbogus: 1\n").expect_err("unknown");
        assert!(err.contains("bogus"), "{err}");
        let err = InjectorConfig::from_yaml("policy: sometimes\n").expect_err("bad policy");
        assert!(err.starts_with("policy: "), "{err}");
        let err = InjectorConfig::from_yaml("neverInjectSelector:\n  - matchLabels: [a]\n").expect_err("x");
        assert!(err.starts_with("neverInjectSelector[0].matchLabels"), "{err}");
    }
}

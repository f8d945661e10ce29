//! Prometheus metrics of the admission server, named as istiod's so that its dashboards and
//! alerts apply: injection (`sidecar_injection_*`) and validation (`galley_validation_*`).
//! Counters carry the OpenMetrics `_total` suffix (`galley_validation_passed_total`); the
//! injection counters' names end in it already, as istiod's do.
//!
//! Label values: a resource's group, version and plural name as the API server sends them in
//! `request.resource`, a failure `reason` from a fixed set
//! ([`REASON_DECODE`](crate::admission::REASON_DECODE) and its siblings), an HTTP `status`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::admission::{Audit, Endpoint, Resource};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    group: String,
    version: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailedLabels {
    group: String,
    version: String,
    resource: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// Handles to the admission metrics; clones share the values. [`Metrics::default`] counts
/// without being served; [`Metrics::register`] adds them to a registry.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    injection_requests: Counter,
    injection_success: Counter,
    injection_skip: Counter,
    injection_failure: Counter,
    validation_passed: Family<ResourceLabels, Counter>,
    validation_failed: Family<FailedLabels, Counter>,
    validation_http_error: Family<StatusLabel, Counter>,
}

impl Metrics {
    /// New metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        // The client appends `_total` to counter names.
        registry.register(
            "sidecar_injection_requests",
            "Sidecar injection requests (every POST to /inject)",
            metrics.injection_requests.clone(),
        );
        registry.register(
            "sidecar_injection_success",
            "Sidecar injection requests answered with a patch",
            metrics.injection_success.clone(),
        );
        registry.register(
            "sidecar_injection_skip",
            "Sidecar injection requests allowed unchanged (injection not wanted, or not a pod)",
            metrics.injection_skip.clone(),
        );
        registry.register(
            "sidecar_injection_failure",
            "Sidecar injection requests that failed (malformed review, or injection denied)",
            metrics.injection_failure.clone(),
        );
        registry.register(
            "galley_validation_passed",
            "Objects the validation webhook allowed, by group, version and resource",
            metrics.validation_passed.clone(),
        );
        registry.register(
            "galley_validation_failed",
            "Objects the validation webhook denied, by group, version, resource and reason",
            metrics.validation_failed.clone(),
        );
        registry.register(
            "galley_validation_http_error",
            "Requests to /validate refused before validation (not an AdmissionReview, too large, …), by HTTP status",
            metrics.validation_http_error.clone(),
        );
        metrics
    }

    /// Every metric with a series, in the text a scrape returns (empty families are left out
    /// of a scrape): the names dashboards and alerts may use.
    pub fn sample_exposition() -> String {
        let mut registry = Registry::default();
        let m = Self::register(&mut registry);
        let resource = Box::new(Resource::default());
        m.record(&Endpoint::Validate, 200, &Audit::Validated { resource: resource.clone(), reason: None });
        m.record(&Endpoint::Validate, 200, &Audit::Validated { resource, reason: Some("invalid_resource") });
        m.record(&Endpoint::Validate, 400, &Audit::None);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    /// Counts one answered request to `endpoint`: its HTTP `status` and what it decided.
    pub fn record(&self, endpoint: &Endpoint, status: u16, audit: &Audit) {
        match endpoint {
            Endpoint::Inject { .. } => {
                self.injection_requests.inc();
                match audit {
                    Audit::Injected => self.injection_success.inc(),
                    Audit::Skipped => self.injection_skip.inc(),
                    // A refused request (HTTP error) is a failed injection too, as in istiod.
                    _ => self.injection_failure.inc(),
                };
            }
            Endpoint::Validate => match audit {
                Audit::Validated { resource, reason: None } => {
                    self.validation_passed.get_or_create(&ResourceLabels::from(&**resource)).inc();
                }
                Audit::Validated { resource, reason: Some(reason) } => {
                    let Resource { group, version, resource } = (**resource).clone();
                    self.validation_failed.get_or_create(&FailedLabels { group, version, resource, reason }).inc();
                }
                _ if status >= 400 => {
                    self.validation_http_error.get_or_create(&StatusLabel { status: status.to_string() }).inc();
                }
                _ => {}
            },
        }
    }
}

impl From<&Resource> for ResourceLabels {
    fn from(r: &Resource) -> Self {
        Self { group: r.group.clone(), version: r.version.clone(), resource: r.resource.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{REASON_INVALID, handle};
    use crate::inject::InjectionContext;
    use serde_json::json;

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn every_injection_outcome_is_counted_once_beside_the_request() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let inject = Endpoint::Inject { cluster_id: None, network: None };
        m.record(&inject, 200, &Audit::Injected);
        m.record(&inject, 200, &Audit::Injected);
        m.record(&inject, 200, &Audit::Skipped);
        m.record(&inject, 200, &Audit::InjectFailed);
        m.record(&inject, 400, &Audit::None);
        let text = encode(&registry);
        for line in [
            "sidecar_injection_requests_total 5",
            "sidecar_injection_success_total 2",
            "sidecar_injection_skip_total 1",
            "sidecar_injection_failure_total 2",
        ] {
            assert!(has(&text, line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn validation_counts_by_resource_and_reason_and_http_errors_by_status() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let vs = Box::new(Resource {
            group: "networking.istio.io".into(),
            version: "v1".into(),
            resource: "virtualservices".into(),
        });
        m.record(&Endpoint::Validate, 200, &Audit::Validated { resource: vs.clone(), reason: None });
        m.record(&Endpoint::Validate, 200, &Audit::Validated { resource: vs, reason: Some(REASON_INVALID) });
        m.record(&Endpoint::Validate, 415, &Audit::None);
        m.record(&Endpoint::Validate, 200, &Audit::None);
        let text = encode(&registry);
        for line in [
            r#"galley_validation_passed_total{group="networking.istio.io",version="v1",resource="virtualservices"} 1"#,
            r#"galley_validation_failed_total{group="networking.istio.io",version="v1",resource="virtualservices",reason="invalid_resource"} 1"#,
            r#"galley_validation_http_error_total{status="415"} 1"#,
        ] {
            assert!(has(&text, line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("sidecar_injection_requests_total 1"), "validation is not injection:\n{text}");
    }

    /// The audit [`handle`] returns for real reviews: the resource from `request.resource`,
    /// else from the object; the reason istiod would give.
    #[test]
    fn handle_reports_what_it_decided() {
        let review = |object: serde_json::Value, resource: Option<serde_json::Value>| {
            let mut request = json!({"uid": "u", "operation": "CREATE", "object": object});
            if let Some(resource) = resource {
                request["resource"] = resource;
            }
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                       "request": request}))
            .expect("encode")
        };
        let ctx = InjectionContext::default();
        let vs = |weight: i64| {
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "r", "namespace": "default"},
                   "spec": {"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}, "weight": weight}]}]}})
        };
        let good = handle(&Endpoint::Validate, Some("application/json"), &review(vs(100), None), &ctx);
        let resource = Box::new(Resource {
            group: "networking.istio.io".into(),
            version: "v1".into(),
            resource: "virtualservices".into(),
        });
        assert_eq!(good.audit, Audit::Validated { resource: resource.clone(), reason: None });
        let bad = handle(&Endpoint::Validate, Some("application/json"), &review(vs(-5), None), &ctx);
        assert_eq!(bad.audit, Audit::Validated { resource, reason: Some(REASON_INVALID) });

        let policy = json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                            "metadata": {"name": "p", "namespace": "default"}, "spec": {}});
        let given = json!({"group": "security.istio.io", "version": "v1beta1", "resource": "authorizationpolicies"});
        let reply = handle(&Endpoint::Validate, Some("application/json"), &review(policy.clone(), Some(given)), &ctx);
        let Audit::Validated { resource, .. } = &reply.audit else { panic!("{:?}", reply.audit) };
        assert_eq!(resource.version, "v1beta1", "request.resource wins");
        let reply = handle(&Endpoint::Validate, Some("application/json"), &review(policy, None), &ctx);
        let Audit::Validated { resource, .. } = &reply.audit else { panic!("{:?}", reply.audit) };
        assert_eq!(resource.resource, "authorizationpolicies");

        let gateway = json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                             "metadata": {"name": "g", "namespace": "default"}, "spec": {}});
        let reply = handle(&Endpoint::Validate, Some("application/json"), &review(gateway, None), &ctx);
        let Audit::Validated { resource, .. } = &reply.audit else { panic!("{:?}", reply.audit) };
        assert_eq!(resource.resource, "gateways");

        let refused = handle(&Endpoint::Validate, Some("text/plain"), b"{}", &ctx);
        assert_eq!((refused.status, refused.audit), (415, Audit::None));
    }
}

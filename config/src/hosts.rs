//! Host names as Istio config writes them: short names resolved against the object's
//! namespace, wildcard patterns, and `namespace/host` scopes (Sidecar egress hosts, Gateway
//! server hosts). Shared by translation and analysis so both read a host the same way.

/// DNS suffix of Kubernetes service names.
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// Resolves a host as written in a config object in `namespace`: a short name (no dot) becomes
/// `<name>.<namespace>.svc.cluster.local`; anything else is taken as written.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_owned()
    } else {
        // `concat`: one allocation of the exact size, without the formatting machinery (route
        // translation resolves every destination's host).
        [host, ".", namespace, ".svc.", DOMAIN_SUFFIX].concat()
    }
}

/// Whether `pattern` (possibly `*.suffix` or `*`) covers `host`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

/// The host part of a `namespace/host` scope (`*/host`, `./host`, `ns/host`; a bare host is
/// `*/host`) when the scope admits `namespace`; `.` stands for `own_namespace`.
pub fn scoped_host<'p>(scope: &'p str, own_namespace: &str, namespace: &str) -> Option<&'p str> {
    let (ns, host) = scope.split_once('/').unwrap_or(("*", scope));
    (ns == "*" || (ns == "." && namespace == own_namespace) || ns == namespace).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_resolve_match_and_scope() {
        assert_eq!(resolve_host("reviews", "bookinfo"), "reviews.bookinfo.svc.cluster.local");
        assert_eq!(resolve_host("api.example.com", "x"), "api.example.com");
        assert!(host_matches("*.example.com", "api.example.com") && host_matches("*", "anything"));
        assert!(!host_matches("api.example.com", "web.example.com"));
        assert_eq!(scoped_host("./*", "apps", "apps"), Some("*"));
        assert_eq!(scoped_host("./*", "apps", "other"), None);
        assert_eq!(scoped_host("other/web", "apps", "other"), Some("web"));
        assert_eq!(scoped_host("web.example.com", "apps", "any"), Some("web.example.com"));
    }
}

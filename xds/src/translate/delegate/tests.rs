use super::*;

fn rule(yaml: &str) -> HttpRoute {
    serde_saphyr::from_str(yaml).unwrap()
}

fn uris(route: &HttpRoute) -> Vec<String> {
    route.r#match.iter().map(|m| format!("{:?}", m.uri)).collect()
}

#[test]
fn a_delegate_rule_narrows_the_root_rule() {
    let root = rule("match: [{uri: {prefix: /reviews}}, {uri: {prefix: /ratings}}]\ndelegate: {name: d}");
    // Within the first prefix only: one pair of the two holds.
    let merged =
        merge_rule(&root, &rule("match: [{uri: {prefix: /reviews/v2}}]\nroute: [{destination: {host: r2}}]")).unwrap();
    assert_eq!(uris(&merged), [r#"Some(Prefix("/reviews/v2"))"#]);
    assert_eq!(merged.route.len(), 1, "the delegate rule's destinations");
    // Within neither: the rule is left out.
    assert!(merge_rule(&root, &rule("match: [{uri: {prefix: /other}}]")).is_none());
    // Without matches of its own, the rule takes the root's.
    let merged = merge_rule(&root, &rule("route: [{destination: {host: r}}]")).unwrap();
    assert_eq!(uris(&merged), [r#"Some(Prefix("/reviews"))"#, r#"Some(Prefix("/ratings"))"#]);
    // A root rule without matches leaves the delegate's as they are.
    let merged = merge_rule(&rule("delegate: {name: d}"), &rule("match: [{uri: {exact: /x}}]")).unwrap();
    assert_eq!(uris(&merged), [r#"Some(Exact("/x"))"#]);
}

#[test]
fn conditions_combine_or_contradict() {
    let m = |yaml: &str| -> HttpMatchRequest { serde_saphyr::from_str(yaml).unwrap() };
    let cases = [
        ("{uri: {prefix: /a}}", "{uri: {exact: /a/b}}", Some(r#"Some(Exact("/a/b"))"#)),
        ("{uri: {exact: /a/b}}", "{uri: {prefix: /a}}", Some(r#"Some(Exact("/a/b"))"#)),
        ("{uri: {exact: /a}}", "{uri: {exact: /b}}", None),
        ("{uri: {regex: /a.*}}", "{uri: {regex: /a.*}}", Some(r#"Some(Regex("/a.*"))"#)),
        ("{uri: {regex: /a.*}}", "{uri: {prefix: /a}}", None),
        ("{method: {exact: GET}}", "{method: {exact: POST}}", None),
        ("{headers: {x: {exact: '1'}}}", "{headers: {x: {exact: '2'}}}", None),
        ("{port: 80}", "{port: 8080}", None),
    ];
    for (root, delegate, want) in cases {
        let merged = merge_match(&m(root), &m(delegate));
        assert_eq!(merged.as_ref().map(|m| format!("{:?}", m.uri)).as_deref(), want, "{root} + {delegate}");
    }
    let both = merge_match(&m("{headers: {x: {exact: '1'}}, method: {exact: GET}}"), &m("{headers: {y: {prefix: a}}}"))
        .unwrap();
    assert_eq!(both.headers.len(), 2);
    assert_eq!(both.method, Some(StringMatch::Exact("GET".into())));
}

#[test]
fn a_delegate_is_a_host_less_virtual_service_exported_to_the_root() {
    let vs = |name: &str, namespace: &str, hosts: &[&str], export_to: &[&str]| {
        let mut vs = VirtualService::new(name, Default::default());
        vs.metadata.namespace = Some(namespace.into());
        vs.spec.hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        vs.spec.export_to = export_to.iter().map(|e| (*e).to_owned()).collect();
        Arc::new(vs)
    };
    let all = vec![
        vs("root", "front", &["shop.example.com"], &[]),
        vs("reviews", "team-a", &[], &[]),
        vs("private", "team-b", &[], &["."]),
        vs("hosted", "team-a", &["x.example.com"], &[]),
    ];
    let root = &all[0];
    let named = |name: &str, namespace: &str| Delegate { name: name.into(), namespace: namespace.into() };
    assert!(find(&all, root, &named("reviews", "team-a")).is_some());
    assert!(find(&all, root, &named("reviews", "")).is_none(), "the root's namespace by default");
    assert!(find(&all, root, &named("private", "team-b")).is_none(), "not exported to the root's namespace");
    assert!(find(&all, root, &named("hosted", "team-a")).is_none(), "a delegate has no hosts");
    assert!(find(&all, root, &named("missing", "team-a")).is_none());
}

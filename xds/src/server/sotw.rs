//! State-of-the-world ADS streams (`StreamAggregatedResources`).
//!
//! Requests are classified as upstream does (xDS spec §1.2): a NACK is recorded and not
//! answered; an empty name list for a non-wildcard type unsubscribes; a first request (or one
//! without a nonce) is answered with everything in scope; a stale nonce is ignored; an ACK is
//! answered only with names it newly added (or, for wildcard types, the new full set when the
//! subscription changed). Pushes send CDS and LDS in full when anything in them changed, and
//! only the changed EDS and RDS resources.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use super::Kind;
use super::Shared;
use super::cache::{EncodedResource, ProxyResources};
use super::connection::{
    Closed, Interner, NameDigest, Registration, StreamCore, StreamHandler, WatchState, drive, nack_message,
};
use super::wire::{Names, Requests, SotwRequest, SotwResponse};

type Responses = super::wire::ResponseSender<SotwResponse>;

/// What a request asks the server to send.
enum Answer {
    Nothing,
    /// Everything in the subscription's scope (a new or re-started subscription).
    Everything {
        initial: bool,
    },
    /// Only these newly subscribed names.
    Names(Vec<String>),
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    registration: Registration,
    first: SotwRequest,
    requests: Requests<SotwRequest>,
    responses: Responses,
) {
    drive(SotwStream { core: StreamCore::new(shared, registration), responses }, first, requests).await;
}

#[derive(Debug)]
struct SotwStream {
    core: StreamCore,
    responses: Responses,
}

impl StreamHandler for SotwStream {
    type Request = SotwRequest;

    fn core(&mut self) -> &mut StreamCore {
        &mut self.core
    }

    fn on_request(&mut self, request: SotwRequest) -> impl Future<Output = Result<(), Closed>> + Send {
        SotwStream::on_request(self, request)
    }

    fn push(&mut self) -> impl Future<Output = Result<(), Closed>> + Send {
        SotwStream::push(self)
    }
}

impl SotwStream {
    async fn on_request(&mut self, request: SotwRequest) -> Result<(), Closed> {
        let Some(kind) = Kind::from_type_url(&request.type_url) else {
            tracing::debug!(type_url = request.type_url, "ignoring a request for a type this server does not serve");
            return Ok(());
        };
        if self.core.push_pending() {
            self.push().await?;
        }
        if self.core.is_new() {
            // Join storms: building the first config counts as an initial push.
            self.core.hold_initial_permit().await;
        }
        let resources = self.core.current().await;
        let answer = self.classify(kind, request);
        self.core.release_initial_permit_if_answered();
        match answer {
            Answer::Nothing => Ok(()),
            Answer::Everything { initial } => {
                // Join storms: bound how many streams have first config in flight at once.
                if initial {
                    self.core.hold_initial_permit().await;
                }
                let list = {
                    let watches = self.core.connection().watches();
                    let Some(watch) = watches.get(&kind) else { return Ok(()) };
                    scope(kind, watch, &resources)
                };
                self.send(kind, &resources, list, true, false).await
            }
            Answer::Names(names) => {
                let list: Vec<_> = names.iter().filter_map(|name| resources.get(kind, name).cloned()).collect();
                if list.is_empty() {
                    return Ok(());
                }
                self.send(kind, &resources, list, false, false).await
            }
        }
    }

    /// Updates the watch for `request` and decides what to answer.
    fn classify(&self, kind: Kind, request: SotwRequest) -> Answer {
        let shared = &self.core.shared;
        let connection = self.core.connection();
        let mut watches = connection.watches();
        if let Some(error) = &request.error_detail {
            // NACK: the proxy keeps its last good config; answering would only repeat the
            // rejected one.
            let message = nack_message(error);
            tracing::warn!(connection = %connection.id, type_url = request.type_url, message, "config rejected");
            shared.metrics.rejected(kind);
            if let Some(watch) = watches.get_mut(&kind) {
                watch.last_error = Some(message);
                watch.nacks += 1;
            }
            return Answer::Nothing;
        }
        // An ACK usually repeats the subscription unchanged (thousands of EDS names on every
        // push): tell that without building a new set.
        if !request.response_nonce.is_empty()
            && let Some(watch) = watches.get_mut(&kind)
            && request.response_nonce == watch.nonce_sent
            && !watch.legacy_wildcard
            && same_names(&request.resource_names, watch)
        {
            watch.nonce_acked = request.response_nonce;
            watch.version_acked = request.version_info;
            watch.last_error = None;
            return Answer::Nothing;
        }
        let star = request.resource_names.iter().any(|name| name == b"*");
        let Some(names) = subscribed_names(&shared.interner, &request.resource_names) else {
            tracing::warn!(connection = %connection.id, type_url = request.type_url, "resource names not UTF-8; request ignored");
            return Answer::Nothing;
        };
        if !kind.is_wildcard() && names.is_empty() && !star {
            watches.remove(&kind);
            return Answer::Nothing;
        }
        let Some(watch) = watches.get_mut(&kind) else {
            let legacy_wildcard = kind.is_wildcard() && names.is_empty() && !star;
            watches.insert(
                kind,
                WatchState { wildcard: star || legacy_wildcard, legacy_wildcard, names, ..Default::default() },
            );
            return Answer::Everything { initial: true };
        };
        let wildcard = star || (names.is_empty() && watch.legacy_wildcard);
        if request.response_nonce.is_empty() {
            // The client restarted this subscription: it holds nothing we can rely on.
            watch.wildcard = wildcard;
            watch.names = names;
            watch.sent = Arc::default();
            return Answer::Everything { initial: false };
        }
        if request.response_nonce != watch.nonce_sent {
            shared.metrics.expired_nonce(kind);
            return Answer::Nothing;
        }
        watch.nonce_acked = request.response_nonce;
        watch.version_acked = request.version_info;
        watch.last_error = None;
        if kind.is_wildcard() {
            if wildcard == watch.wildcard && names == watch.names {
                return Answer::Nothing;
            }
            watch.wildcard = wildcard;
            watch.names = names;
            return Answer::Everything { initial: false };
        }
        let added: Vec<String> = names.difference(&watch.names).cloned().collect();
        let widened = wildcard && !watch.wildcard;
        let removed: Vec<&String> = watch.names.difference(&names).filter(|n| watch.sent.contains_key(*n)).collect();
        if !removed.is_empty() {
            // Forget them, so a later re-subscription is answered even if unchanged.
            let mut sent = (*watch.sent).clone();
            for name in removed {
                sent.remove(name);
            }
            watch.sent = shared.interner.sent(Arc::new(sent));
        }
        watch.wildcard = wildcard;
        if names != watch.names {
            watch.names = names;
        }
        if widened {
            Answer::Everything { initial: false }
        } else if added.is_empty() {
            Answer::Nothing
        } else {
            Answer::Names(added)
        }
    }

    /// Moves the stream to the latest generation and sends what changed, in push order.
    async fn push(&mut self) -> Result<(), Closed> {
        let before = self.core.served().cloned();
        let Some(resources) = self.core.advance().await else { return Ok(()) };
        // Envoy re-warms an updated cluster and needs its endpoints again even if unchanged.
        let mut changed_clusters = BTreeSet::new();
        for kind in Kind::PUSH_ORDER {
            // Every watch was last answered from `before`: a kind served from the same sets
            // has nothing to send.
            let rewarm = kind == Kind::Endpoint && !changed_clusters.is_empty();
            if !rewarm && before.as_ref().is_some_and(|b| b.same_source(&resources, kind)) {
                continue;
            }
            let planned = {
                let mut watches = self.core.connection().watches();
                let Some(watch) = watches.get_mut(&kind) else { continue };
                plan_push(kind, watch, &resources, &mut changed_clusters)
            };
            if let Some(list) = planned {
                self.send(kind, &resources, list, kind.is_wildcard(), true).await?;
            }
        }
        self.core.shared.metrics.converged(resources.generation.changed_at.elapsed());
        Ok(())
    }

    /// Sends `list` as one response; `full` means it is the whole set the client should hold;
    /// `synced` that every other resource in scope was just checked to be current (a push).
    async fn send(
        &self,
        kind: Kind,
        resources: &ProxyResources,
        list: Vec<Arc<EncodedResource>>,
        full: bool,
        synced: bool,
    ) -> Result<(), Closed> {
        let started = Instant::now();
        let nonce = self.core.shared.nonce();
        let version_info = resources.generation.version_info.clone();
        {
            let mut watches = self.core.connection().watches();
            let Some(watch) = watches.get_mut(&kind) else { return Ok(()) };
            watch.nonce_sent = nonce.clone();
            watch.version_sent = version_info.clone();
            let sent = list.iter().map(|r| (r.name.clone(), r.hash));
            watch.sent = match resources.sent_map(kind, &list).filter(|_| full) {
                Some(shared) => shared,
                // The stream already held every other resource of the kind at its current
                // version: it now holds the whole shared map (no private copy to build).
                None if !full && synced && holds_all_but(kind, resources, &watch.sent, &list) => {
                    resources.whole_sent_map(kind).unwrap_or_default()
                }
                None if full => self.core.shared.interner.sent(Arc::new(sent.collect::<BTreeMap<_, _>>())),
                None => {
                    let mut extended = (*watch.sent).clone();
                    extended.extend(sent);
                    self.core.shared.interner.sent(Arc::new(extended))
                }
            };
        }
        let size: usize = list.iter().map(|r| r.value.len()).sum();
        // The shared encodings themselves: the body writes them out (see `wire`).
        let response = SotwResponse { version_info, type_url: kind.type_url(), nonce, resources: list };
        self.responses.send(Ok(Box::new(response))).await.map_err(|_| Closed)?;
        self.core.shared.metrics.pushed(kind, size, started.elapsed());
        Ok(())
    }
}

/// Every resource in the subscription's scope, sorted by name.
pub(crate) fn scope(kind: Kind, watch: &WatchState, resources: &ProxyResources) -> Vec<Arc<EncodedResource>> {
    if watch.wildcard {
        resources.all(kind).into_iter().cloned().collect()
    } else {
        resources.named(kind, &watch.names)
    }
}

/// The set of names (without `*`) a request subscribes to, shared: the one an earlier request
/// listing the same names gave, else built and interned. `None` if a name is not UTF-8 (a
/// `string` field must be).
fn subscribed_names(interner: &Interner, requested: &Names) -> Option<Arc<BTreeSet<String>>> {
    let explicit = requested.iter().filter(|name| *name != b"*");
    let built = || -> Option<Arc<BTreeSet<String>>> {
        Some(Arc::new(explicit.clone().map(|n| String::from_utf8(n.to_vec()).ok()).collect::<Option<_>>()?))
    };
    // Short lists are cheaper to build than to look up.
    if requested.len() < SHARED_LIST_MIN_LEN {
        return Some(interner.names(built()?));
    }
    let digest = NameDigest::of(explicit.clone());
    if let Some(names) = interner.listed(digest) {
        return Some(names);
    }
    Some(interner.names_listed(digest, built()?))
}

/// Request lists shorter than this are built into a set rather than looked up by digest.
const SHARED_LIST_MIN_LEN: usize = 16;

/// Whether a request's `resource_names` are exactly the watch's subscription (`*` standing
/// for the wildcard), in any order.
fn same_names(requested: &Names, watch: &mut WatchState) -> bool {
    let is_star = |n: &[u8]| n == b"*";
    let star = requested.iter().filter(|n| is_star(n)).count();
    if (star > 0) != watch.wildcard || requested.len() - star != watch.names.len() {
        return false;
    }
    let explicit = requested.iter().filter(|n| !is_star(n));
    // The subscription's own (sorted) order first: one pass, and a mismatch shows early.
    if explicit.clone().zip(watch.names.iter()).all(|(a, b)| a == b.as_bytes()) {
        return true;
    }
    // Envoy's SotW client lists names in the order of its hash set, so the same names come
    // in another order: compared as multisets, by digest. Looking each name up in the set
    // (and checking for repeats) took ~370 µs per ACK of 3,000 names.
    NameDigest::of(explicit) == watch.names_digest()
}

/// Whether `sent` plus `list` is exactly the whole shared map of `kind`: `sent` has as many
/// entries as the map minus what `list` adds, and `list` only updates or adds members.
/// (Cheap: lengths and the new names only; `sent` only ever holds names the map has, being
/// pruned of vanished names every push.)
fn holds_all_but(
    kind: Kind,
    resources: &ProxyResources,
    sent: &BTreeMap<String, u64>,
    list: &[Arc<EncodedResource>],
) -> bool {
    let Some(whole) = resources.whole_len(kind) else { return false };
    let added = list.iter().filter(|r| !sent.contains_key(&r.name)).count();
    sent.len() + added == whole
        && list.iter().all(|r| resources.get(kind, &r.name).is_some_and(|cur| cur.hash == r.hash))
}

/// For each resource of `current` (sorted by name), whether `sent` (also sorted) lacks it or
/// has another version: one merged walk, not a map lookup per resource.
pub(crate) fn changed_flags(current: &[Arc<EncodedResource>], sent: &BTreeMap<String, u64>) -> Vec<bool> {
    let mut sent = sent.iter().peekable();
    current
        .iter()
        .map(|r| {
            while sent.next_if(|(name, _)| name.as_str() < r.name.as_str()).is_some() {}
            match sent.next_if(|(name, _)| **name == r.name) {
                Some((_, hash)) => *hash != r.hash,
                None => true,
            }
        })
        .collect()
}

/// What a push sends for one type, if anything: the full set for CDS/LDS when any member
/// changed, the changed (or re-warming) members for EDS/RDS.
fn plan_push(
    kind: Kind,
    watch: &mut WatchState,
    resources: &ProxyResources,
    changed_clusters: &mut BTreeSet<String>,
) -> Option<Vec<Arc<EncodedResource>>> {
    // The stream holds the very map of every resource of the kind, and it is still current:
    // nothing in scope changed (the common case for most types of most pushes).
    let rewarm = kind == Kind::Endpoint && !changed_clusters.is_empty();
    if !rewarm && resources.whole_sent_map(kind).is_some_and(|whole| Arc::ptr_eq(&whole, &watch.sent)) {
        return None;
    }
    // The stream holds every assignment of the previous table, and this one only changed some
    // contents: those are the push (the common endpoint churn, O(changes) per stream).
    if !rewarm
        && (watch.wildcard || watch.names.len() == watch.sent.len())
        && let Some(changed) = resources.changed_since(kind, &watch.sent)
    {
        return (!changed.is_empty()).then(|| changed.to_vec());
    }
    let current = scope(kind, watch, resources);
    let changed = changed_flags(&current, &watch.sent);
    if kind == Kind::Cluster {
        changed_clusters.extend(current.iter().zip(&changed).filter(|(_, c)| **c).map(|(r, _)| r.name.clone()));
    }
    if kind.is_wildcard() {
        let unchanged = current.len() == watch.sent.len() && !changed.iter().any(|c| *c);
        return (!unchanged).then_some(current);
    }
    let list: Vec<_> = current
        .iter()
        .zip(&changed)
        .filter(|(r, c)| **c || (rewarm && changed_clusters.contains(&r.name)))
        .map(|(r, _)| r.clone())
        .collect();
    // Forget what no longer exists, so it is sent again if it comes back unchanged. (Checked
    // first: the map is shared between streams and copied only to change it.)
    if !resources.has_all(kind, watch.sent.keys()) {
        Arc::make_mut(&mut watch.sent).retain(|name, _| resources.get(kind, name).is_some());
    }
    (!list.is_empty()).then_some(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_names_in_any_order_and_with_the_wildcard() {
        let watch = |wildcard: bool, names: &[&str]| WatchState {
            wildcard,
            names: Arc::new(names.iter().map(|n| (*n).to_owned()).collect()),
            ..WatchState::default()
        };
        let abc = watch(false, &["a", "b", "c"]);
        let star_ab = watch(true, &["a", "b"]);
        let cases: &[(&WatchState, &[&str], bool)] = &[
            (&abc, &["a", "b", "c"], true),
            (&abc, &["c", "a", "b"], true),
            (&abc, &["a", "b"], false),
            (&abc, &["a", "b", "d"], false),
            (&abc, &["a", "c", "b", "b"], false),
            (&abc, &["a", "a", "b"], false),
            (&abc, &["b", "a", "a"], false),
            (&abc, &["a", "b", "c", "*"], false),
            (&abc, &["b", "c", "a"], true),
            (&abc, &["c", "b", "b"], false),
            (&abc, &["c", "a", "d"], false),
            (&star_ab, &["*", "a", "b"], true),
            (&star_ab, &["b", "*", "a"], true),
            (&star_ab, &["a", "b"], false),
            (&star_ab, &["*", "a", "c"], false),
            (&watch(true, &[]), &["*"], true),
            (&watch(false, &[]), &[], true),
        ];
        for (watch, requested, same) in cases {
            let names = Names::from_values(requested);
            let mut watch = (*watch).clone();
            assert_eq!(same_names(&names, &mut watch), *same, "{requested:?} against {:?}", watch.names);
        }
    }

    /// Requests listing the same names, in any order and with repeats, share one set; a set
    /// no stream holds any more is not handed out again.
    #[test]
    fn requests_listing_the_same_names_share_one_set() {
        let interner = Interner::default();
        let many: Vec<String> = (0..100).map(|i| format!("outbound|80||svc-{i:03}.bench.svc.cluster.local")).collect();
        let mut reversed = many.clone();
        reversed.reverse();
        let first = subscribed_names(&interner, &Names::from_values(&many)).unwrap();
        assert_eq!(first.iter().collect::<Vec<_>>(), many.iter().collect::<Vec<_>>());
        let digest = NameDigest::of(reversed.iter().map(String::as_bytes));
        assert!(interner.listed(digest).is_some_and(|set| Arc::ptr_eq(&set, &first)), "filed by its digest");
        let again = subscribed_names(&interner, &Names::from_values(&reversed)).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the same names in another order");
        let mut with_star = reversed.clone();
        with_star.push("*".to_owned());
        assert!(Arc::ptr_eq(&first, &subscribed_names(&interner, &Names::from_values(&with_star)).unwrap()));
        let mut repeated = many.clone();
        repeated.push(many[7].clone());
        let deduplicated = subscribed_names(&interner, &Names::from_values(&repeated)).unwrap();
        assert_eq!(*deduplicated, *first);
        let mut other = many.clone();
        other[50] = "outbound|80||other.bench.svc.cluster.local".to_owned();
        let other_set = subscribed_names(&interner, &Names::from_values(&other)).unwrap();
        assert!(other_set.contains(&other[50]) && !other_set.contains(&many[50]));
        let mut not_utf8: Vec<Vec<u8>> = many.iter().map(|n| n.clone().into_bytes()).collect();
        not_utf8[3] = vec![0xff, 0xfe];
        assert!(subscribed_names(&interner, &Names::from_values(&not_utf8)).is_none());
        assert!(subscribed_names(&interner, &Names::from_values(&[[0xff_u8]])).is_none(), "a short list");
        let short = subscribed_names(&interner, &Names::from_values(&["b", "a", "*"])).unwrap();
        assert_eq!(short.iter().map(String::as_str).collect::<Vec<_>>(), ["a", "b"]);
        // Freed: the next request builds its set again (and gets the names it listed).
        drop((first, again, deduplicated));
        assert!(interner.listed(digest).is_none());
        let rebuilt = subscribed_names(&interner, &Names::from_values(&many)).unwrap();
        assert_eq!(rebuilt.iter().collect::<Vec<_>>(), many.iter().collect::<Vec<_>>());
    }

    /// The digest of the subscription is taken once per set: a stream whose subscription
    /// changed is compared with the new set, not the digest of the old one.
    #[test]
    fn same_names_follows_a_changed_subscription() {
        let set = |names: &[&str]| Arc::new(names.iter().map(|n| (*n).to_owned()).collect::<BTreeSet<String>>());
        let mut watch = WatchState { names: set(&["a", "b", "c"]), ..WatchState::default() };
        assert!(same_names(&Names::from_values(&["c", "a", "b"]), &mut watch));
        watch.names = set(&["a", "b", "d"]);
        assert!(!same_names(&Names::from_values(&["c", "a", "b"]), &mut watch), "the old set's digest");
        assert!(same_names(&Names::from_values(&["d", "a", "b"]), &mut watch));
        // 3,000 names in another order than the subscription's, as Envoy lists them.
        let many: Vec<String> =
            (0..3_000).map(|i| format!("outbound|80||svc-{i:04}.bench.svc.cluster.local")).collect();
        watch.names = Arc::new(many.iter().cloned().collect());
        let mut shuffled = many.clone();
        shuffled.sort_by_key(|name| name.bytes().rev().collect::<Vec<u8>>());
        assert!(same_names(&Names::from_values(&shuffled), &mut watch));
        shuffled[1_500] = "outbound|80||other.bench.svc.cluster.local".to_owned();
        assert!(!same_names(&Names::from_values(&shuffled), &mut watch));
    }
}

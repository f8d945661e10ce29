//! Encoded resources and the per-push cache that lets every stream share them.
//!
//! A resource is encoded once into shared [`Bytes`] and kept behind an `Arc` with a hash of its
//! bytes, which is both its delta version and how streams tell what changed since they last
//! sent it. A [`Generation`] is one debounced push: endpoints encoded once (reusing the
//! previous generation's encoding of every ClusterLoadAssignment that did not change), and the
//! outbound resources of each distinct [`ViewKey`] computed and encoded on first use. Inbound
//! resources depend on the proxy itself and are built per stream. The name table (NDS) depends
//! only on the proxy's namespace and is built on first use per namespace.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Instant;

use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint};
use envoy_types::pb::google::protobuf::Any;
use prost::bytes::Bytes;
use prost::{Message, Name};
use tokio::sync::OnceCell;

use crate::model::{Proxy, Snapshot};
use crate::translate::endpoint::EncodedAssignment;
use crate::translate::locality::{self, LocalityPolicy, Place};
use crate::translate::route::{RouteMemo, RouteReuse};
use crate::translate::{LabelSelectors, Parts, Resources, RouteMemoSlot, ViewKey};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

use super::connection::Pool;
use super::{Generator, Kind};

/// One resource, encoded once and shared by every stream that sends it.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedResource {
    pub name: String,
    /// Hash of the encoded bytes: equal content, equal hash.
    pub hash: u64,
    /// Static for every kind discovery serves: a string per resource was ~100 bytes of heap
    /// each, a megabyte for a view of 12,000 clusters.
    pub type_url: Cow<'static, str>,
    /// The encoded message. Responses send these bytes themselves (no copy per stream) when
    /// they are large; see `wire`.
    pub value: Bytes,
}

/// `M`'s type URL: the static one of the kind discovery serves it as, else (no such type today)
/// its own.
fn type_url_of<M: Name>() -> Cow<'static, str> {
    super::Kind::PUSH_ORDER
        .into_iter()
        .map(super::Kind::type_url)
        .find(|url| url.strip_prefix("type.googleapis.com/").is_some_and(|name| is_full_name::<M>(name)))
        .map_or_else(|| Cow::Owned(M::type_url()), Cow::Borrowed)
}

/// Whether `name` is `M`'s `package.Name`, compared without building it.
fn is_full_name<M: Name>(name: &str) -> bool {
    name.strip_prefix(M::PACKAGE).and_then(|rest| rest.strip_prefix('.')) == Some(M::NAME)
}

impl EncodedResource {
    pub fn encode<M: Message + Name>(name: String, message: &M) -> Self {
        let value = Bytes::from(message.encode_to_vec());
        let hash = content_hash(&value);
        Self { name, hash, type_url: type_url_of::<M>(), value }
    }

    /// The resource as a protobuf `Any` (copies the bytes).
    pub fn to_any(&self) -> Any {
        Any { type_url: self.type_url.clone().into_owned(), value: self.value.to_vec() }
    }

    /// The per-resource version sent in delta responses.
    pub fn version(&self) -> String {
        format_version(self.hash)
    }

    /// [`version`](Self::version) without an allocation: responses write it for every
    /// resource of every stream.
    pub fn version_bytes(&self) -> [u8; VERSION_LEN] {
        version_bytes(self.hash)
    }
}

/// Length of every delta resource version: a content hash in 16 hex digits.
pub const VERSION_LEN: usize = 16;

/// How a content hash is written as a delta resource version.
pub fn format_version(hash: u64) -> String {
    let bytes = version_bytes(hash);
    bytes.iter().map(|b| char::from(*b)).collect()
}

/// [`format_version`]'s digits (lower-case hex, zero-padded).
fn version_bytes(hash: u64) -> [u8; VERSION_LEN] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; VERSION_LEN];
    for (i, digit) in out.iter_mut().enumerate() {
        let shift = 4 * (VERSION_LEN - 1 - i);
        *digit = DIGITS[usize::try_from((hash >> shift) & 0xf).unwrap_or(0)];
    }
    out
}

/// Reads a version this server wrote; anything else (another server's versions after a
/// reconnect) maps to `None`, which never equals a current hash, so the resource is resent.
pub fn parse_version(version: &str) -> Option<u64> {
    (version.len() == 16).then(|| u64::from_str_radix(version, 16).ok()).flatten()
}

/// XXH3 (64-bit, seed 0) of the bytes: a published algorithm, so versions are stable across
/// builds and processes (unlike std's hasher) and survive a server restart: a reconnecting
/// delta client is not resent everything it already has. It runs at memory speed; byte-wise
/// FNV took a millisecond per megabyte, on every resource a change encodes.
pub fn content_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Encoded resources of one type, by name.
pub type ResourceMap = BTreeMap<String, Arc<EncodedResource>>;

/// Name → content hash of a whole [`ResourceMap`]: what a stream records as sent when it sent
/// all of it. Built once per map and shared by every such stream (thousands of proxies of one
/// view would otherwise each build and hold the same tens of thousands of entries).
pub type SentMap = Arc<BTreeMap<String, u64>>;

fn sent_map_of(map: &ResourceMap) -> SentMap {
    Arc::new(map.iter().map(|(name, r)| (name.clone(), r.hash)).collect())
}

/// Encoded clusters, listeners and routes (the proxy-specific types), with the translated
/// messages they came from (of clusters encoded as they were built, only those with inline
/// endpoints; of route configurations encoded as they were built, none). Each kind is shared
/// (`Arc`) so a set rebuilt for a change that did not touch a kind takes that kind over from
/// its predecessor as it is.
#[derive(Clone, Debug, Default)]
pub struct EncodedSet {
    pub clusters: Arc<ResourceMap>,
    pub listeners: Arc<ResourceMap>,
    pub routes: Arc<ResourceMap>,
    pub secrets: Arc<ResourceMap>,
    pub extension_configs: Arc<ResourceMap>,
    /// All the clusters' messages, or only those with inline endpoints when the clusters were
    /// encoded as they were built (`Resources::encoded_clusters`).
    cluster_source: Arc<Vec<Cluster>>,
    listener_source: Arc<Vec<Listener>>,
    route_source: Arc<Vec<RouteConfiguration>>,
    secret_source: Arc<Vec<Secret>>,
    extension_config_source: Arc<Vec<TypedExtensionConfig>>,
    /// The locality policies of the EDS clusters (see [`Resources::localities`]).
    localities: Arc<Vec<(String, LocalityPolicy)>>,
    /// Those of the DNS clusters, whose endpoints are inline: a proxy with a place gets its
    /// own copy of these clusters ([`Generation::localized_view`]).
    inline_localities: Arc<Vec<(String, LocalityPolicy)>>,
    /// For a proxy's copy of a view (see above): the view it was made from. Held, so the view
    /// lives as long as its copies (the proxies of a place hold only the copy) and the next
    /// push can tell which copied clusters still hold.
    inline_view: Option<Arc<EncodedSet>>,
    /// What the next route translation of this view can reuse.
    route_memo: RouteMemoSlot,
    /// [`SentMap`]s of the five maps, in the same order, built on first use.
    sent: [OnceLock<SentMap>; 5],
}

/// Encodes `items` by name. A name seen twice keeps its first resource: a response must not
/// carry the same name twice (Envoy rejects it), and translation sorts by name, so the first is
/// the deterministic choice.
///
/// A resource equal (`==`) to the one of the same name in `previous` keeps `previous`'s
/// encoding and version. Equality, not the bytes, decides: prost writes proto maps
/// (`typed_per_filter_config`, metadata) in `HashMap` order, so equal messages can encode to
/// different bytes, which would look like a change and be pushed again for nothing.
fn encode_kind<M: Message + Name + PartialEq>(
    items: &[M],
    name: impl Fn(&M) -> &str,
    previous: Option<(&ResourceMap, &[M])>,
) -> ResourceMap {
    let old: BTreeMap<&str, &M> = previous
        .map(|(_, messages)| {
            let mut out = BTreeMap::new();
            for message in messages {
                out.entry(name(message)).or_insert(message);
            }
            out
        })
        .unwrap_or_default();
    let mut map = ResourceMap::new();
    for item in items {
        let key = name(item);
        if map.contains_key(key) {
            tracing::warn!(name = key, type_url = %M::type_url(), "duplicate resource name; keeping the first");
            continue;
        }
        let reused =
            previous.and_then(|(encoded, _)| (*old.get(key)? == item).then(|| encoded.get(key).cloned()).flatten());
        let encoded = reused.unwrap_or_else(|| Arc::new(EncodedResource::encode(key.to_owned(), item)));
        map.insert(key.to_owned(), encoded);
    }
    map
}

impl EncodedSet {
    /// Encodes every resource (see [`encode_kind`] for names and reuse of `previous`).
    pub fn encode(resources: Resources, previous: Option<&EncodedSet>) -> Self {
        Self::update(previous, resources, Parts::ALL)
    }

    /// The set for `fresh`, whose kinds in `parts` were translated again; every other kind is
    /// `previous`'s, shared as it is (when there is no `previous`, `parts` must be all).
    pub fn update(previous: Option<&EncodedSet>, fresh: Resources, parts: Parts) -> Self {
        let (clusters, cluster_source) = served_part(
            previous.map(|p| (&p.clusters, &p.cluster_source)),
            !parts.clusters,
            (fresh.encoded_clusters, fresh.clusters),
            |c| &c.name,
        );
        let (listeners, listener_source) =
            kind_part(previous.map(|p| (&p.listeners, &p.listener_source)), !parts.listeners, fresh.listeners, |l| {
                &l.name
            });
        let (routes, route_source) = served_part(
            previous.map(|p| (&p.routes, &p.route_source)),
            !parts.routes,
            (fresh.encoded_routes, fresh.routes),
            |r| &r.name,
        );
        // Secrets go with the clusters and gateway listeners that name them (`Parts::secrets`).
        let (secrets, secret_source) =
            kind_part(previous.map(|p| (&p.secrets, &p.secret_source)), !parts.secrets(), fresh.secrets, |s| &s.name);
        // Extension configs go with the listeners that name them.
        let (extension_configs, extension_config_source) = kind_part(
            previous.map(|p| (&p.extension_configs, &p.extension_config_source)),
            !parts.listeners,
            fresh.extension_configs,
            |c| &c.name,
        );
        let (localities, inline_localities) = match previous {
            Some(previous) if !parts.clusters => (previous.localities.clone(), previous.inline_localities.clone()),
            _ => {
                let inline: std::collections::HashSet<&str> = cluster_source
                    .iter()
                    .filter(|c| c.load_assignment.as_ref().is_some_and(|a| !a.endpoints.is_empty()))
                    .map(|c| c.name.as_str())
                    .collect();
                let (inline, eds): (Vec<_>, Vec<_>) =
                    fresh.localities.into_iter().partition(|(name, _)| inline.contains(name.as_str()));
                (Arc::new(eds), Arc::new(inline))
            }
        };
        let mut set = Self {
            clusters,
            listeners,
            routes,
            secrets,
            extension_configs,
            cluster_source,
            listener_source,
            route_source,
            secret_source,
            extension_config_source,
            localities,
            inline_localities,
            inline_view: None,
            route_memo: match previous {
                Some(previous) if !parts.routes => previous.route_memo.clone(),
                _ => fresh.route_memo,
            },
            sent: Default::default(),
        };
        // A map whose every resource was reused is the previous map: keep its shared sent map,
        // so streams holding it see in O(1) that nothing changed.
        if let Some(previous) = previous {
            let kinds = [Kind::Cluster, Kind::Listener, Kind::Route, Kind::Secret, Kind::ExtensionConfig];
            for (slot, kind) in kinds.into_iter().enumerate() {
                if let (Some(new), Some(old)) = (set.map(kind), previous.map(kind))
                    && (std::ptr::eq(new, old) || same_map(new, old))
                    && let Some(sent) = previous.sent[slot].get()
                {
                    set.sent[slot] = OnceLock::from(sent.clone());
                }
            }
        }
        set
    }

    /// The translated messages, for translating again only some kinds. A set whose clusters
    /// were encoded as they were built has only those with inline endpoints as messages.
    pub fn sources(&self) -> Resources {
        Resources {
            clusters: self.cluster_source.as_ref().clone(),
            encoded_clusters: Vec::new(),
            listeners: self.listener_source.as_ref().clone(),
            encoded_routes: Vec::new(),
            routes: self.route_source.as_ref().clone(),
            secrets: self.secret_source.as_ref().clone(),
            extension_configs: self.extension_config_source.as_ref().clone(),
            localities: {
                let mut all: Vec<_> = self.localities.iter().chain(self.inline_localities.iter()).cloned().collect();
                all.sort_by(|a, b| a.0.cmp(&b.0));
                all
            },
            route_memo: self.route_memo.clone(),
        }
    }

    /// The route memo of the translation this set came from (see [`RouteMemoSlot`]).
    pub fn route_memo(&self) -> Option<RouteReuse<'_>> {
        let memo: &RouteMemo = self.route_memo.0.as_deref()?;
        Some(RouteReuse::new(memo))
    }

    /// This set with `replaced` in place of its clusters of the same names (a proxy's own
    /// copies of DNS clusters). The translated sources stay the view's: a copy is never the
    /// base of a partial rebuild.
    fn with_clusters(self: &Arc<Self>, replaced: Vec<Arc<EncodedResource>>) -> Self {
        let mut set = self.as_ref().clone();
        let mut clusters = self.clusters.as_ref().clone();
        for cluster in replaced {
            clusters.insert(cluster.name.clone(), cluster);
        }
        set.clusters = Arc::new(clusters);
        set.inline_view = Some(self.clone());
        set.sent[0] = OnceLock::new();
        set
    }

    fn map(&self, kind: Kind) -> Option<&ResourceMap> {
        match kind {
            Kind::Cluster => Some(&self.clusters),
            Kind::Listener => Some(&self.listeners),
            Kind::Route => Some(&self.routes),
            Kind::Secret => Some(&self.secrets),
            Kind::ExtensionConfig => Some(&self.extension_configs),
            Kind::Endpoint | Kind::NameTable => None,
        }
    }

    fn sent_map(&self, kind: Kind) -> Option<SentMap> {
        let (slot, map) = match kind {
            Kind::Cluster => (0, &self.clusters),
            Kind::Listener => (1, &self.listeners),
            Kind::Route => (2, &self.routes),
            Kind::Secret => (3, &self.secrets),
            Kind::ExtensionConfig => (4, &self.extension_configs),
            Kind::Endpoint | Kind::NameTable => return None,
        };
        Some(self.sent[slot].get_or_init(|| sent_map_of(map)).clone())
    }
}

/// One kind of an [`EncodedSet`]: `previous`'s as it is when `keep`, else `fresh` encoded
/// (reusing `previous`'s encoding of equal resources, see [`encode_kind`]).
fn kind_part<M: Message + Name + PartialEq>(
    previous: Option<(&Arc<ResourceMap>, &Arc<Vec<M>>)>,
    keep: bool,
    fresh: Vec<M>,
    name: impl Fn(&M) -> &str,
) -> (Arc<ResourceMap>, Arc<Vec<M>>) {
    match previous {
        Some((map, source)) if keep => (map.clone(), source.clone()),
        _ => {
            let old = previous.map(|(map, source)| (map.as_ref(), source.as_slice()));
            (Arc::new(encode_kind(&fresh, name, old)), Arc::new(fresh))
        }
    }
}

/// [`kind_part`] for a kind translation may have encoded as it built it: `fresh` is the encoded
/// resources and the messages kept (see [`served_kind`]); with none encoded, the messages are
/// encoded here.
fn served_part<M: Message + Name + PartialEq>(
    previous: Option<(&Arc<ResourceMap>, &Arc<Vec<M>>)>,
    keep: bool,
    (encoded, messages): (Vec<(String, Bytes)>, Vec<M>),
    name: impl Fn(&M) -> &String,
) -> (Arc<ResourceMap>, Arc<Vec<M>>) {
    if keep || encoded.is_empty() {
        return kind_part(previous, keep, messages, |m| name(m).as_str());
    }
    let old = previous.map(|(map, source)| (map.as_ref(), source.as_slice()));
    let map = served_kind(encoded, &messages, name, old);
    (Arc::new(map), Arc::new(messages))
}

/// The map of resources encoded as they were built (`encoded`, in translation order, a name
/// seen twice keeping its first), `messages` being those also kept as messages (clusters with
/// inline endpoints; resources of another translation appended, see `Resources::extend`). A
/// resource keeps `previous`'s encoding and version when it is unchanged: equal messages decide
/// for those kept as messages, whose maps can hold two entries (endpoint metadata) that prost
/// writes in `HashMap` order, and equal bytes for the others, which are written
/// deterministically (every map of such a cluster holds at most one entry; routes write theirs
/// in order, see `route::outbound_served`).
fn served_kind<M: Message + Name + PartialEq>(
    encoded: Vec<(String, Bytes)>,
    messages: &[M],
    name_of: impl Fn(&M) -> &String,
    previous: Option<(&ResourceMap, &[M])>,
) -> ResourceMap {
    let messages: BTreeMap<&str, &M> = messages.iter().rev().map(|m| (name_of(m).as_str(), m)).collect();
    let old_messages: BTreeMap<&str, &M> =
        previous.map(|(_, old)| old.iter().rev().map(|m| (name_of(m).as_str(), m)).collect()).unwrap_or_default();
    let mut map = ResourceMap::new();
    for (name, value) in encoded {
        if map.contains_key(&name) {
            tracing::warn!(name, type_url = %M::type_url(), "duplicate resource name; keeping the first");
            continue;
        }
        let unchanged = |old: &EncodedResource| match messages.get(name.as_str()) {
            Some(message) => old_messages.get(name.as_str()).is_some_and(|old| old == message),
            None => old.value == value,
        };
        let reused = previous.and_then(|(map, _)| map.get(&name)).filter(|old| unchanged(old)).cloned();
        let resource = reused.unwrap_or_else(|| Arc::new(EncodedResource::of_encoded::<M>(name.clone(), value)));
        map.insert(name, resource);
    }
    // Messages the encoded list does not name are encoded here, after them.
    for (name, message) in messages {
        if !map.contains_key(name) {
            let reused = old_messages.get(name).filter(|old| **old == message).and_then(|_| previous?.0.get(name));
            let resource =
                reused.cloned().unwrap_or_else(|| Arc::new(EncodedResource::encode(name.to_owned(), message)));
            map.insert(name.to_owned(), resource);
        }
    }
    map
}

/// Whether two maps hold the very same encoded resources under the same names.
fn same_map(a: &ResourceMap, b: &ResourceMap) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((na, ra), (nb, rb))| Arc::ptr_eq(ra, rb) && na == nb)
}

/// The inbound sets of live streams by content. Proxies whose own side translates to the same
/// resources (one deployment's replicas: the inbound listener matches ports, not addresses)
/// share one set instead of holding a copy each, ~17 KB per stream on the benchmark mesh.
#[derive(Debug, Default)]
pub struct InboundSets(Pool<EncodedSet>);

impl InboundSets {
    /// A live set with the same resources as `set`, or `set`, now shared.
    pub fn share(&self, set: EncodedSet) -> Arc<EncodedSet> {
        match set.resources_digest() {
            Some(digest) => self.0.intern_by(Arc::new(set), digest, EncodedSet::same_resources),
            None => Arc::new(set),
        }
    }
}

impl EncodedSet {
    /// The kinds' encoded maps, in a fixed order.
    fn maps(&self) -> [&ResourceMap; 5] {
        [&self.clusters, &self.listeners, &self.routes, &self.secrets, &self.extension_configs]
    }

    /// A digest of every resource's name and content hash; `None` for a set that carries more
    /// than its resources (locality policies, a route memo, the view it was copied from),
    /// which sharing would have to compare too.
    fn resources_digest(&self) -> Option<u64> {
        let plain = self.localities.is_empty()
            && self.inline_localities.is_empty()
            && self.inline_view.is_none()
            && self.route_memo.0.is_none();
        plain.then(|| {
            let mut hasher = std::hash::DefaultHasher::new();
            for map in self.maps() {
                std::hash::Hash::hash(&map.len(), &mut hasher);
                for (name, resource) in map {
                    std::hash::Hash::hash(&(name, resource.hash), &mut hasher);
                }
            }
            std::hash::Hasher::finish(&hasher)
        })
    }

    /// Whether both serve the same resources, byte for byte. Equal encodings decode to equal
    /// messages, so the translated sources are equal too.
    fn same_resources(&self, other: &EncodedSet) -> bool {
        self.maps().into_iter().zip(other.maps()).all(|(a, b)| {
            a.len() == b.len() && a.iter().zip(b).all(|((na, ra), (nb, rb))| na == nb && ra.same_content(rb))
        })
    }
}

/// Every ClusterLoadAssignment of a generation, encoded canonically (equal content, equal
/// bytes: see `translate::endpoint::encode`), so the next generation's are compared by bytes,
/// and no decoded copy is kept.
#[derive(Debug, Default)]
pub struct EndpointTable {
    pub encoded: ResourceMap,
    /// The [`SentMap`] of `encoded`, built on first use.
    sent: OnceLock<SentMap>,
    /// How this table differs from the one it was updated from, when only contents changed.
    delta: Option<TableDelta>,
}

/// The assignments an update changed, when it kept the set of names: a stream holding the
/// whole previous table (its sent map is `previous_sent`, when some stream built it) needs
/// exactly `changed`, found without walking its thousands of subscribed names; and a table
/// localized from the previous one needs only those localized again.
#[derive(Debug)]
pub struct TableDelta {
    pub previous_sent: Option<SentMap>,
    pub changed: Vec<Arc<EncodedResource>>,
}

impl EncodedResource {
    /// A resource of type `M` already encoded.
    pub fn of_encoded<M: Name>(name: String, value: Bytes) -> Self {
        let hash = content_hash(&value);
        Self { name, hash, type_url: type_url_of::<M>(), value }
    }

    /// An assignment already in its canonical encoding.
    pub fn assignment(assignment: EncodedAssignment) -> Self {
        let hash = content_hash(&assignment.value);
        Self {
            name: assignment.cluster_name,
            hash,
            type_url: Cow::Borrowed(super::Kind::Endpoint.type_url()),
            value: assignment.value,
        }
    }

    fn same_content(&self, other: &EncodedResource) -> bool {
        self.hash == other.hash && self.value == other.value
    }
}

/// `fresh` with its name, or `kept` (the same name's resource in the previous table) in its
/// place when it holds the same bytes, keeping its version; and whether `fresh` was taken.
fn kept_or_fresh(fresh: EncodedResource, kept: Option<&Arc<EncodedResource>>) -> (String, Arc<EncodedResource>, bool) {
    match kept.filter(|kept| kept.same_content(&fresh)) {
        Some(kept) => (fresh.name, Arc::clone(kept), false),
        None => {
            let fresh = Arc::new(fresh);
            (fresh.name.clone(), fresh, true)
        }
    }
}

fn warn_duplicate_assignment(name: &str) {
    tracing::warn!(name, "duplicate ClusterLoadAssignment; keeping the first");
}

impl EndpointTable {
    /// Takes `assignments`, reusing `previous`'s resource (and so its version) for every
    /// assignment whose bytes are unchanged: endpoint churn is the most frequent change and
    /// usually touches few clusters.
    pub fn build(mut assignments: Vec<EncodedAssignment>, previous: Option<&EndpointTable>) -> Self {
        // Usually sorted by name already (`endpoint::encoded_all`). In name order, duplicates
        // are neighbours, the previous table is walked alongside, and the map is built in bulk:
        // searching it once per assignment (and `previous` once more) was a tenth of a full
        // endpoint rebuild (perf, 12,000 assignments). A stable sort keeps the first of a
        // duplicate name first.
        if !assignments.is_sorted_by(|a, b| a.cluster_name <= b.cluster_name) {
            assignments.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        }
        let mut old = previous.map(|p| p.encoded.iter().peekable());
        let mut entries: Vec<(String, Arc<EncodedResource>)> = Vec::with_capacity(assignments.len());
        for assignment in assignments {
            if entries.last().is_some_and(|(name, _)| *name == assignment.cluster_name) {
                warn_duplicate_assignment(&assignment.cluster_name);
                continue;
            }
            let fresh = EncodedResource::assignment(assignment);
            let kept = old.as_mut().and_then(|old| {
                while old.next_if(|(name, _)| name.as_str() < fresh.name.as_str()).is_some() {}
                old.peek().filter(|(name, _)| **name == fresh.name).map(|(_, kept)| *kept)
            });
            let (name, resource, _) = kept_or_fresh(fresh, kept);
            entries.push((name, resource));
        }
        let mut table = Self { encoded: entries.into_iter().collect(), ..Self::default() };
        if let Some(previous) = previous {
            table.keep_sent_map_if_unchanged(previous);
        }
        table
    }

    /// Adds `assignment` unless its name is taken (the first wins), keeping `previous`'s
    /// resource when the bytes are equal. Returns the resource when a new one was made.
    fn insert(
        &mut self,
        assignment: EncodedAssignment,
        previous: Option<&EndpointTable>,
    ) -> Option<Arc<EncodedResource>> {
        if self.encoded.contains_key(&assignment.cluster_name) {
            warn_duplicate_assignment(&assignment.cluster_name);
            return None;
        }
        let fresh = EncodedResource::assignment(assignment);
        let kept = previous.and_then(|p| p.encoded.get(&fresh.name));
        let (name, resource, made) = kept_or_fresh(fresh, kept);
        self.encoded.insert(name, resource.clone());
        made.then_some(resource)
    }

    /// The shared [`SentMap`] of the whole table.
    pub fn sent_map(&self) -> SentMap {
        self.sent.get_or_init(|| sent_map_of(&self.encoded)).clone()
    }

    fn keep_sent_map_if_unchanged(&mut self, previous: &EndpointTable) {
        if same_map(&self.encoded, &previous.encoded)
            && let Some(sent) = previous.sent.get()
        {
            self.sent = OnceLock::from(sent.clone());
        }
    }
}

impl EndpointTable {
    /// `previous` with the assignments of `hosts` replaced by `assignments` (all of theirs, in
    /// any order); every other entry is shared as it is. An assignment equal to the one it
    /// replaces keeps its encoding and version, so streams are not sent it again.
    pub fn update(previous: &EndpointTable, hosts: &BTreeSet<String>, assignments: Vec<EncodedAssignment>) -> Self {
        let of_changed_host = |name: &str| assignment_host(name).is_some_and(|host| hosts.contains(host));
        let mut table = EndpointTable {
            encoded: previous
                .encoded
                .iter()
                .filter(|(n, _)| !of_changed_host(n))
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect(),
            sent: OnceLock::new(),
            delta: None,
        };
        let mut changed = Vec::new();
        let mut same_names = true;
        for assignment in assignments {
            same_names &= previous.encoded.contains_key(&assignment.cluster_name);
            changed.extend(table.insert(assignment, Some(previous)));
        }
        table.keep_sent_map_if_unchanged(previous);
        if same_names && table.encoded.len() == previous.encoded.len() {
            table.delta = Some(TableDelta { previous_sent: previous.sent.get().cloned(), changed });
        }
        table
    }

    /// `shared` with the assignments in `overrides` in place of its own (one proxy's copies of
    /// the clusters that take locality load balancing), or added (its `local_cluster`). An override equal to the shared
    /// assignment is the shared one; one equal to `previous`'s (the same place's table at the
    /// previous generation) keeps that encoding and version.
    pub fn localized(
        shared: &EndpointTable,
        overrides: Vec<ClusterLoadAssignment>,
        previous: Option<&EndpointTable>,
    ) -> Self {
        let mut table = EndpointTable { encoded: shared.encoded.clone(), sent: OnceLock::new(), delta: None };
        for assignment in overrides {
            let assignment = EncodedAssignment::of(&assignment);
            let name = assignment.cluster_name.as_str();
            if shared.encoded.get(name).is_some_and(|own| own.value == assignment.value) {
                continue;
            }
            table.encoded.remove(name);
            table.insert(assignment, previous);
        }
        if let Some(previous) = previous {
            table.keep_sent_map_if_unchanged(previous);
        }
        table
    }

    /// `previous` (a localized table of the previous generation) brought up to `shared`, whose
    /// update from the previous generation's shared table changed only `changed`: those are
    /// taken from `shared`, except the `localized` names, whose new copies are `overrides`.
    /// Records what changed since `previous`, as [`EndpointTable::update`] does.
    pub fn relocalized(
        previous: &EndpointTable,
        shared: &EndpointTable,
        changed: &[Arc<EncodedResource>],
        overrides: Vec<ClusterLoadAssignment>,
        localized: &BTreeSet<&str>,
    ) -> Self {
        let mut table = EndpointTable { encoded: previous.encoded.clone(), sent: OnceLock::new(), delta: None };
        let mut delta = Vec::new();
        for resource in changed.iter().filter(|r| !localized.contains(r.name.as_str())) {
            if shared.encoded.contains_key(&resource.name) {
                table.encoded.insert(resource.name.clone(), resource.clone());
                delta.push(resource.clone());
            }
        }
        for assignment in overrides {
            let fresh = EncodedResource::assignment(EncodedAssignment::of(&assignment));
            if table.encoded.get(&fresh.name).is_some_and(|own| own.same_content(&fresh)) {
                continue;
            }
            // Equal to the shared copy (the place changes nothing here): share it.
            let encoded = match shared.encoded.get(&fresh.name).filter(|own| own.same_content(&fresh)) {
                Some(own) => own.clone(),
                None => Arc::new(fresh),
            };
            table.encoded.insert(encoded.name.clone(), encoded.clone());
            delta.push(encoded);
        }
        if delta.is_empty()
            && let Some(sent) = previous.sent.get()
        {
            table.sent = OnceLock::from(sent.clone());
        }
        table.delta = Some(TableDelta { previous_sent: previous.sent.get().cloned(), changed: delta });
        table
    }

    /// What changed since the table this one was updated from, if only contents did.
    pub fn delta(&self) -> Option<&TableDelta> {
        self.delta.as_ref()
    }
}

/// The host of an EDS cluster name `outbound|<port>|<subset>|<host>`.
fn assignment_host(name: &str) -> Option<&str> {
    name.splitn(4, '|').nth(3)
}

/// One view of a generation: concurrent askers of one key wait for one computation.
type ViewCell = Arc<OnceCell<Weak<EncodedSet>>>;

/// The views map is swept of freed views when a new key makes its size a power of two from
/// this size on (amortised O(1) per key).
const VIEW_SWEEP_FROM: usize = 64;

/// One debounced push: what every stream converges to.
#[derive(Debug)]
pub struct Generation {
    /// Push counter, starting at 1.
    pub version: u64,
    /// `version_info` of SotW responses (and `system_version_info` of delta ones).
    pub version_info: String,
    pub snapshot: Arc<Snapshot>,
    /// When the first change merged into this push arrived (start of convergence time).
    pub changed_at: Instant,
    pub endpoints: Arc<EndpointTable>,
    /// What of a proxy's labels outbound translation looks at (see [`ViewKey`]).
    selectors: LabelSelectors,
    /// Views computed at this generation, held weakly: a stream holds its view (in
    /// [`ProxyResources`]), so a view no stream holds any more is freed, whatever views
    /// proxies that came and went had; held strongly, a generation that lived for hours kept
    /// one per key ever seen.
    views: Mutex<HashMap<ViewKey, ViewCell>>,
    /// Encoded name tables by proxy namespace, built on first use (only agents ask for them).
    /// Held weakly, like `views`: a stream holds its table, and a namespace no stream is in
    /// any more (plaintext clients may claim any) does not keep one.
    name_tables: Mutex<HashMap<String, Weak<ResourceMap>>>,
    /// Views with a place's own copies of their DNS clusters, by view and place
    /// ([`Generation::localized_view`]), held weakly.
    localized_views: Mutex<HashMap<(ViewKey, Place), Weak<EncodedSet>>>,
    /// The previous generation's, taken as each is made again.
    previous_localized_views: Mutex<HashMap<(ViewKey, Place), Arc<EncodedSet>>>,
    /// Endpoint tables localized for one [`LocalizedKey`] (proxies whose clusters take
    /// locality load balancing), held weakly like `views`.
    localized: Mutex<HashMap<LocalizedKey, Weak<EndpointTable>>>,
    /// The previous generation's localized tables, taken as each is localized again, so
    /// unchanged assignments keep their encoding.
    previous_localized: Mutex<HashMap<LocalizedKey, Arc<EndpointTable>>>,
    /// The previous generation's views, taken as each view is recomputed, so unchanged
    /// resources keep their encoding (see [`EncodedSet::encode`]).
    previous_views: Mutex<HashMap<ViewKey, Arc<EncodedSet>>>,
    /// The snapshot `previous_views` were translated from: what a view's rebuild compares
    /// with to translate again only the kinds a change touched.
    previous_snapshot: Option<Arc<Snapshot>>,
    /// Whether inbound inputs shared by every proxy changed since `previous_snapshot`
    /// ([`Generator::inbound_inputs_changed`]), asked once for all streams.
    inbound_inputs_changed: OnceLock<bool>,
    /// The addresses whose endpoints differ from `previous_snapshot`'s, found once for all
    /// streams (see [`Generation::inbound_changed`]).
    endpoint_addresses_changed: OnceLock<BTreeSet<String>>,
    /// Proxies' inbound sets by content, shared with every later generation.
    inbound_sets: Arc<InboundSets>,
}

impl Generation {
    pub fn new(
        version: u64,
        snapshot: Arc<Snapshot>,
        changed_at: Instant,
        endpoints: EndpointTable,
        previous: Option<&Generation>,
    ) -> Self {
        let previous_views = previous
            .map(|p| {
                p.views
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .filter_map(|(key, cell)| Some((key.clone(), cell.get()?.upgrade()?)))
                    .collect()
            })
            .unwrap_or_default();
        let previous_localized_views = previous.map(|p| live(&p.localized_views)).unwrap_or_default();
        let previous_localized = previous.map(|p| live(&p.localized)).unwrap_or_default();
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Self {
            version,
            version_info: format!("{unix}/{version}"),
            selectors: LabelSelectors::of(&snapshot),
            snapshot,
            changed_at,
            endpoints: Arc::new(endpoints),
            views: Mutex::new(HashMap::new()),
            name_tables: Mutex::new(HashMap::new()),
            localized: Mutex::new(HashMap::new()),
            localized_views: Mutex::new(HashMap::new()),
            previous_localized_views: Mutex::new(previous_localized_views),
            previous_localized: Mutex::new(previous_localized),
            previous_views: Mutex::new(previous_views),
            previous_snapshot: previous.map(|p| p.snapshot.clone()),
            inbound_inputs_changed: OnceLock::new(),
            endpoint_addresses_changed: OnceLock::new(),
            inbound_sets: previous.map(|p| p.inbound_sets.clone()).unwrap_or_default(),
        }
    }

    /// Whether a proxy's inbound side served at `before` may differ at this generation.
    fn inbound_changed(&self, generator: &Arc<dyn Generator>, before: &Arc<Snapshot>, proxy: &Proxy) -> bool {
        let shared = match &self.previous_snapshot {
            Some(previous) if Arc::ptr_eq(previous, before) => {
                *self.inbound_inputs_changed.get_or_init(|| generator.inbound_inputs_changed(before, &self.snapshot))
            }
            _ => generator.inbound_inputs_changed(before, &self.snapshot),
        };
        if shared {
            return true;
        }
        let fresh;
        let changed = match &self.previous_snapshot {
            Some(previous) if Arc::ptr_eq(previous, before) => self
                .endpoint_addresses_changed
                .get_or_init(|| crate::translate::endpoint_addresses_changed(before, &self.snapshot)),
            _ => {
                fresh = crate::translate::endpoint_addresses_changed(before, &self.snapshot);
                &fresh
            }
        };
        generator.own_endpoints_changed(proxy, changed)
    }

    /// Number of distinct views held by some stream (debug output).
    pub fn view_count(&self) -> usize {
        self.views.lock().unwrap_or_else(PoisonError::into_inner).values().filter(|cell| view_alive(cell)).count()
    }

    /// The cell of `key`'s view: a fresh one when the view there was freed.
    fn view_cell(&self, key: &ViewKey) -> ViewCell {
        let mut views = self.views.lock().unwrap_or_else(PoisonError::into_inner);
        if views.len() >= VIEW_SWEEP_FROM && views.len().is_power_of_two() && !views.contains_key(key) {
            views.retain(|_, cell| cell.get().is_none() || view_alive(cell));
        }
        let cell = views.entry(key.clone()).or_default();
        if cell.get().is_some() && !view_alive(cell) {
            *cell = ViewCell::default();
        }
        cell.clone()
    }

    /// The encoded name table for proxies in `namespace`: one resource named
    /// [`NAME_TABLE_RESOURCE`]. Cheap (one pass over the services), so built in place.
    fn name_table(&self, namespace: &str) -> Arc<ResourceMap> {
        let mut tables = self.name_tables.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(table) = tables.get(namespace).and_then(Weak::upgrade) {
            return table;
        }
        if tables.len() >= VIEW_SWEEP_FROM && tables.len().is_power_of_two() && !tables.contains_key(namespace) {
            tables.retain(|_, table| table.strong_count() > 0);
        }
        let table = crate::nametable::build(&self.snapshot, namespace);
        let encoded = EncodedResource::encode(NAME_TABLE_RESOURCE.to_owned(), &table);
        let map = Arc::new(ResourceMap::from([(NAME_TABLE_RESOURCE.to_owned(), Arc::new(encoded))]));
        tables.insert(namespace.to_owned(), Arc::downgrade(&map));
        map
    }

    /// Where `proxy` runs, with the values of its labels named in `keys`: its own locality
    /// (node or `istio-locality` label), else that of its endpoint in the registry, else that
    /// of its pod.
    fn place_of<'k>(&self, proxy: &Proxy, keys: impl Iterator<Item = &'k str>) -> Place {
        let own_locality = || {
            proxy
                .ip_addresses
                .iter()
                .flat_map(|ip| self.snapshot.endpoints_at(ip))
                .map(|(_, _, endpoint)| endpoint.locality.as_str())
                .find(|locality| !locality.is_empty())
                .or_else(|| {
                    proxy.ip_addresses.iter().find_map(|ip| self.snapshot.pod_localities.get(ip)).map(String::as_str)
                })
                .unwrap_or_default()
        };
        let locality = if proxy.locality.is_empty() { own_locality() } else { proxy.locality.as_str() };
        Place::new(locality, &proxy.labels, keys)
    }

    /// `view` as `proxy` is served it: with its own copies of the DNS clusters whose inline
    /// endpoints take locality load balancing, when its place is known (shared by every proxy
    /// of the view in that place); else the view itself.
    fn localized_view(&self, view: &Arc<EncodedSet>, proxy: &Proxy) -> Arc<EncodedSet> {
        if view.inline_localities.is_empty() {
            return view.clone();
        }
        let place = self.place_of(proxy, std::iter::empty());
        if place.is_unknown() {
            return view.clone();
        }
        let key = (ViewKey::of(proxy, &self.selectors), place);
        let made_from_view = |set: &Arc<EncodedSet>| {
            Arc::ptr_eq(set, view) || set.inline_view.as_ref().is_some_and(|base| Arc::ptr_eq(base, view))
        };
        if let Some(set) = self
            .localized_views
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .and_then(Weak::upgrade)
            .filter(made_from_view)
        {
            return set;
        }
        // The previous push's copy for this view and place: a copy of a cluster the view still
        // has as it was, under the same policies, is kept with its encoding (encoding again
        // could give a map field another order, and Envoy a cluster update for nothing).
        let previous = self.previous_localized_views.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
        let previous = previous.as_ref().filter(|p| p.inline_localities == view.inline_localities);
        let policies: HashMap<&str, LocalityPolicy> = view
            .inline_localities
            .iter()
            .filter_map(|(name, policy)| Some((name.as_str(), policy.for_inline_endpoints()?)))
            .collect();
        let no_labels = |_: &LbEndpoint| -> Option<&BTreeMap<String, String>> { None };
        let replaced: Vec<Arc<EncodedResource>> = view
            .cluster_source
            .iter()
            .filter_map(|cluster| {
                let policy = policies.get(cluster.name.as_str())?;
                let own = view.clusters.get(&cluster.name)?;
                let kept = previous.and_then(|p| {
                    let unchanged = Arc::ptr_eq(p.inline_view.as_ref()?.clusters.get(&cluster.name)?, own);
                    unchanged.then(|| p.clusters.get(&cluster.name).cloned()).flatten()
                });
                if let Some(kept) = kept {
                    // The view's own encoding when the place changes nothing for the cluster.
                    return (!Arc::ptr_eq(own, &kept)).then_some(kept);
                }
                let assignment = cluster.load_assignment.as_ref()?;
                let localized = locality::localize(assignment, policy, &key.1, &no_labels);
                (localized != *assignment).then(|| {
                    let copy = Cluster { load_assignment: Some(localized), ..cluster.clone() };
                    Arc::new(EncodedResource::encode(copy.name.clone(), &copy))
                })
            })
            .collect();
        let set = if replaced.is_empty() { view.clone() } else { Arc::new(view.with_clusters(replaced)) };
        store_weak(&self.localized_views, key, set)
    }

    /// The endpoint table `proxy` is served: the shared one, unless some of its clusters take
    /// locality load balancing (`policies`, from its view) and its place is known; then the
    /// table localized for its place, shared by every proxy there with the same policies.
    fn endpoints_for(&self, policies: &Arc<Vec<(String, LocalityPolicy)>>, proxy: &Proxy) -> Arc<EndpointTable> {
        let self_discovery = proxy.metadata.get(locality::SELF_DISCOVERY) == Some("true");
        if policies.is_empty() && !self_discovery {
            return self.endpoints.clone();
        }
        let place = self.place_of(proxy, policies.iter().flat_map(|(_, p)| p.proxy_label_keys()));
        let local = self_discovery.then(|| LocalKey {
            // The proxy's own service: the first with an endpoint at its address.
            service: proxy
                .ip_addresses
                .iter()
                .flat_map(|ip| self.snapshot.endpoints_at(ip))
                .map(|(h, _, _)| h.clone())
                .next(),
            region: place.region.clone(),
            revision: locality::revision(&proxy.labels).map(|(k, v)| (k.to_owned(), v.to_owned())),
        });
        if place.is_unknown() && local.is_none() {
            return self.endpoints.clone();
        }
        let key = LocalizedKey { policies: ViewPolicies(policies.clone()), place, local };
        if let Some(table) =
            self.localized.lock().unwrap_or_else(PoisonError::into_inner).get(&key).and_then(Weak::upgrade)
        {
            return table;
        }
        let previous = self.previous_localized.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
        let table = Arc::new(self.localize(&key, previous.as_deref()));
        store_weak(&self.localized, key, table)
    }

    /// The shared table with `key`'s clusters localized for its place. When the shared table
    /// changed only in contents since `previous` (this place's table at the previous
    /// generation) was built, only the changed clusters are localized again, and the table
    /// records what changed, so streams of this place keep the O(changes) path.
    fn localize(&self, key: &LocalizedKey, previous: Option<&EndpointTable>) -> EndpointTable {
        let incremental = previous.and_then(|p| Some((p, self.endpoints.delta()?)));
        let changed: Option<BTreeSet<&str>> =
            incremental.map(|(_, delta)| delta.changed.iter().map(|c| c.name.as_str()).collect());
        let overrides = key
            .policies
            .iter()
            // `failoverPriority` reads workload labels, which can change without the shared
            // assignment changing: such clusters are always localized again.
            .filter(|(name, policy)| {
                changed.as_ref().is_none_or(|changed| changed.contains(name.as_str()))
                    || policy.proxy_label_keys().next().is_some()
            })
            .filter_map(|(name, policy)| {
                let base = match ClusterLoadAssignment::decode(self.endpoints.encoded.get(name)?.value.clone()) {
                    Ok(base) => base,
                    Err(error) => {
                        // Cannot happen (the table's own encoding); the shared copy is served.
                        tracing::error!(name, %error, "an encoded assignment does not decode");
                        return None;
                    }
                };
                // `failoverPriority` reads the labels of the workloads behind the endpoints.
                let workloads: HashMap<(&str, u32), &BTreeMap<String, String>> =
                    match (policy.proxy_label_keys().next(), assignment_host(name)) {
                        (Some(_), Some(host)) => self
                            .snapshot
                            .endpoints
                            .get(host)
                            .into_iter()
                            .flat_map(|list| list.iter())
                            .map(|e| ((e.address.as_str(), e.port), &e.labels))
                            .collect(),
                        _ => HashMap::new(),
                    };
                let labels = |endpoint: &LbEndpoint| {
                    let (address, port) = endpoint_socket(endpoint)?;
                    workloads.get(&(address, port)).copied()
                };
                Some(locality::localize(&base, policy, &key.place, &labels))
            })
            .chain(key.local.as_ref().map(|local| {
                let endpoints = local.service.as_ref().and_then(|host| self.snapshot.endpoints.get(host));
                let revision = local.revision.as_ref().map(|(k, v)| (k.as_str(), v.as_str()));
                locality::local_assignment(endpoints.map_or(&[], |e| e.as_slice()), &local.region, revision)
            }))
            .collect();
        match incremental {
            Some((previous, delta)) => {
                let mut localized: BTreeSet<&str> = key.policies.iter().map(|(name, _)| name.as_str()).collect();
                if key.local.is_some() {
                    localized.insert(locality::LOCAL_CLUSTER);
                }
                EndpointTable::relocalized(previous, &self.endpoints, &delta.changed, overrides, &localized)
            }
            None => EndpointTable::localized(&self.endpoints, overrides, previous),
        }
    }

    /// The encoded outbound resources for `proxy`'s view, computed by the first stream that
    /// asks; concurrent askers with the same view wait for that one computation.
    async fn outbound(&self, generator: &Arc<dyn Generator>, proxy: &Arc<Proxy>) -> Arc<EncodedSet> {
        let key = ViewKey::of(proxy, &self.selectors);
        loop {
            let cell = self.view_cell(&key);
            let mut computed = None;
            let view = cell.get_or_init(|| self.compute_view(generator, proxy, key.clone(), &mut computed)).await;
            // Another stream computed it, and it may have been freed since: then again.
            if let Some(view) = computed.or_else(|| view.upgrade()) {
                return view;
            }
        }
    }

    /// Translates and encodes `key`'s view (from the previous generation's when there is
    /// one); the view goes to `computed`, the cell keeps a weak handle.
    async fn compute_view(
        &self,
        generator: &Arc<dyn Generator>,
        proxy: &Arc<Proxy>,
        key: ViewKey,
        computed: &mut Option<Arc<EncodedSet>>,
    ) -> Weak<EncodedSet> {
        let generator = generator.clone();
        let snapshot = self.snapshot.clone();
        let proxy = proxy.clone();
        let previous = self.previous_views.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
        let previous_snapshot = self.previous_snapshot.clone();
        // Translation and encoding are CPU work: keep them off the async workers.
        let task = tokio::task::spawn_blocking(move || match (previous, previous_snapshot) {
            (Some(previous), Some(before)) => {
                let parts = generator.changed_parts(&before, &snapshot, &key);
                if !parts.any() {
                    return previous;
                }
                let fresh = generator.outbound_parts(&snapshot, &proxy, parts, previous.route_memo());
                Arc::new(EncodedSet::update(Some(&previous), fresh, parts))
            }
            (previous, _) => Arc::new(EncodedSet::encode(generator.outbound(&snapshot, &proxy), previous.as_deref())),
        });
        let view = match task.await {
            Ok(set) => set,
            Err(error) => {
                tracing::error!(%error, "outbound translation failed; serving no outbound resources");
                Arc::new(EncodedSet::default())
            }
        };
        let weak = Arc::downgrade(&view);
        *computed = Some(view);
        weak
    }
}

/// What a localized endpoint table depends on: the locality policies of a view's clusters and
/// the place of the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LocalizedKey {
    policies: ViewPolicies,
    place: Place,
    /// What the proxy's `local_cluster` holds, when it asked for self-discovery.
    local: Option<LocalKey>,
}

/// A view's locality policies, compared by identity: every proxy of a view holds the same
/// `Arc`, and a view whose clusters did not change keeps it across pushes, so a key costs
/// nothing to hash however many clusters the policies name (hashing their content cost every
/// stream a walk of them at every push).
#[derive(Clone, Debug)]
struct ViewPolicies(Arc<Vec<(String, LocalityPolicy)>>);

impl PartialEq for ViewPolicies {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ViewPolicies {}

impl std::hash::Hash for ViewPolicies {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

impl std::ops::Deref for ViewPolicies {
    type Target = Vec<(String, LocalityPolicy)>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// What a `local_cluster` assignment depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LocalKey {
    /// The proxy's own service, if it has one.
    service: Option<String>,
    region: String,
    /// The proxy's revision label and value.
    revision: Option<(String, String)>,
}

/// The address and port of an endpoint that has a socket address.
fn endpoint_socket(endpoint: &LbEndpoint) -> Option<(&str, u32)> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let Some(HostIdentifier::Endpoint(endpoint)) = &endpoint.host_identifier else { return None };
    let Some(address::Address::SocketAddress(socket)) = endpoint.address.as_ref()?.address.as_ref() else {
        return None;
    };
    match socket.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(port)) => Some((socket.address.as_str(), port)),
        _ => None,
    }
}

/// The entries of a weakly held cache whose values some stream still holds.
fn live<K: Clone + Eq + std::hash::Hash, V>(cache: &Mutex<HashMap<K, Weak<V>>>) -> HashMap<K, Arc<V>> {
    let cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    cache.iter().filter_map(|(key, value)| Some((key.clone(), value.upgrade()?))).collect()
}

/// Stores `value` under `key` in a weakly held cache and returns what the cache then holds:
/// when another stream stored one for the key meanwhile, that one (the first stored wins, so
/// streams of one key share it). Freed entries are swept when the cache doubles in size.
fn store_weak<K: Eq + std::hash::Hash, V>(cache: &Mutex<HashMap<K, Weak<V>>>, key: K, value: Arc<V>) -> Arc<V> {
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= VIEW_SWEEP_FROM && cache.len().is_power_of_two() && !cache.contains_key(&key) {
        cache.retain(|_, value| value.strong_count() > 0);
    }
    match cache.get(&key).and_then(Weak::upgrade) {
        Some(stored) => stored,
        None => {
            cache.insert(key, Arc::downgrade(&value));
            value
        }
    }
}

fn view_alive(cell: &ViewCell) -> bool {
    cell.get().is_some_and(|view| view.strong_count() > 0)
}

/// Name of the one resource an NDS response carries (Istio's agent ignores it).
pub const NAME_TABLE_RESOURCE: &str = "nametable";

/// Everything one proxy is served at one generation.
#[derive(Clone, Debug)]
pub struct ProxyResources {
    pub generation: Arc<Generation>,
    /// The generation's endpoint table, or its copy localized for this proxy.
    endpoints: Arc<EndpointTable>,
    outbound: Arc<EncodedSet>,
    inbound: Arc<EncodedSet>,
    namespace: Arc<str>,
    /// The generation's name table for `namespace`, looked up on first use.
    name_table: Arc<OnceLock<Arc<ResourceMap>>>,
}

impl ProxyResources {
    /// Whether this proxy's resources include SDS secrets.
    pub fn has_credentials(&self) -> bool {
        !self.outbound.secrets.is_empty() || !self.inbound.secrets.is_empty()
    }

    /// Serves this proxy no secrets (see [`Connection::may_receive_credentials`](super::connection::Connection::may_receive_credentials)).
    pub fn withhold_credentials(&mut self) {
        if self.has_credentials() {
            let strip = |set: &Arc<EncodedSet>| {
                let mut set = set.as_ref().clone();
                set.secrets = Arc::default();
                set.sent[3] = OnceLock::new();
                Arc::new(set)
            };
            self.outbound = strip(&self.outbound);
            self.inbound = strip(&self.inbound);
        }
    }
}

impl ProxyResources {
    /// `previous`: what the stream was last served (its inbound encodings are reused when
    /// unchanged).
    pub async fn build(
        generator: &Arc<dyn Generator>,
        generation: Arc<Generation>,
        proxy: &Arc<Proxy>,
        previous: Option<&ProxyResources>,
    ) -> Self {
        let namespace: Arc<str> = previous.map_or_else(|| proxy.namespace.as_str().into(), |p| p.namespace.clone());
        let outbound = generation.outbound(generator, proxy).await;
        let outbound = generation.localized_view(&outbound, proxy);
        let endpoints = generation.endpoints_for(&outbound.localities, proxy);
        // Most changes leave a proxy's own side as it was: keep it without a translation.
        if let Some(previous) = previous
            && !generation.inbound_changed(generator, &previous.generation.snapshot, proxy)
        {
            return Self {
                generation,
                endpoints,
                outbound,
                inbound: previous.inbound.clone(),
                namespace,
                name_table: Arc::default(),
            };
        }
        let inbound = {
            let generator = generator.clone();
            let snapshot = generation.snapshot.clone();
            let proxy = proxy.clone();
            let previous = previous.map(|p| p.inbound.clone());
            tokio::task::spawn_blocking(move || {
                EncodedSet::encode(generator.inbound(&snapshot, &proxy), previous.as_deref())
            })
            .await
            .unwrap_or_else(|error| {
                tracing::error!(%error, "inbound translation failed; serving no inbound resources");
                EncodedSet::default()
            })
        };
        let inbound = generation.inbound_sets.share(inbound);
        Self { generation, endpoints, outbound, inbound, namespace, name_table: Arc::default() }
    }

    fn name_table(&self) -> &ResourceMap {
        self.name_table.get_or_init(|| self.generation.name_table(&self.namespace))
    }

    /// The resource `name` of `kind`, if this proxy has one. Inbound wins a name clash.
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Arc<EncodedResource>> {
        if kind == Kind::NameTable {
            return self.name_table().get(name);
        }
        match (self.inbound.map(kind), self.outbound.map(kind)) {
            (Some(inbound), Some(outbound)) => inbound.get(name).or_else(|| outbound.get(name)),
            _ => self.endpoints.encoded.get(name),
        }
    }

    /// The shared [`SentMap`] of `list` when `list` (a subset of this proxy's resources of
    /// `kind`, as [`ProxyResources::all`] or a subscription scope gives) is all of them and they
    /// come from one shared map; `None` otherwise, and the caller builds its own.
    pub fn sent_map(&self, kind: Kind, list: &[Arc<EncodedResource>]) -> Option<SentMap> {
        if kind == Kind::NameTable {
            return None;
        }
        match (self.inbound.map(kind), self.outbound.map(kind)) {
            (Some(inbound), Some(outbound)) if inbound.is_empty() && list.len() == outbound.len() => {
                self.outbound.sent_map(kind)
            }
            (Some(_), Some(_)) => None,
            _ => {
                let table = &self.endpoints;
                (list.len() == table.encoded.len())
                    .then(|| table.sent.get_or_init(|| sent_map_of(&table.encoded)).clone())
            }
        }
    }

    /// The shared [`SentMap`] of all of this proxy's resources of `kind`, when they are one
    /// shared map (no inbound resources of the kind; endpoints always); `None` otherwise.
    pub fn whole_sent_map(&self, kind: Kind) -> Option<SentMap> {
        match (self.inbound.map(kind), self.outbound.map(kind)) {
            (Some(inbound), Some(_)) if inbound.is_empty() => self.outbound.sent_map(kind),
            (Some(_), Some(_)) => None,
            _ if kind == Kind::Endpoint => Some(self.endpoints.sent_map()),
            _ => None,
        }
    }

    /// How many resources of `kind` this proxy has, when they are one shared map.
    /// The resources of `kind` that changed since `sent`, when `sent` is the whole shared map of
    /// the endpoint table this generation's was updated from and the update only changed
    /// contents: found in O(changes) instead of walking every name a stream holds.
    pub(crate) fn changed_since(&self, kind: Kind, sent: &SentMap) -> Option<&[Arc<EncodedResource>]> {
        if kind != Kind::Endpoint {
            return None;
        }
        let delta = self.endpoints.delta()?;
        delta
            .previous_sent
            .as_ref()
            .is_some_and(|previous| Arc::ptr_eq(previous, sent))
            .then_some(delta.changed.as_slice())
    }

    pub(crate) fn whole_len(&self, kind: Kind) -> Option<usize> {
        match (self.inbound.map(kind), self.outbound.map(kind)) {
            (Some(inbound), Some(outbound)) if inbound.is_empty() => Some(outbound.len()),
            (Some(_), Some(_)) => None,
            _ if kind == Kind::Endpoint => Some(self.endpoints.encoded.len()),
            _ => None,
        }
    }

    /// The resources named in `names` (sorted), in name order. For endpoints, one merged walk
    /// over both sorted collections instead of a lookup per name: a proxy subscribes to
    /// thousands of assignments and every push looked each one up.
    pub fn named(&self, kind: Kind, names: &BTreeSet<String>) -> Vec<Arc<EncodedResource>> {
        if kind != Kind::Endpoint {
            return names.iter().filter_map(|name| self.get(kind, name).cloned()).collect();
        }
        let table = &self.endpoints.encoded;
        if names.len() < table.len() / 8 {
            return names.iter().filter_map(|name| table.get(name).cloned()).collect();
        }
        let mut out = Vec::with_capacity(names.len().min(table.len()));
        let mut wanted = names.iter().peekable();
        for (name, resource) in table {
            while wanted.next_if(|w| w.as_str() < name.as_str()).is_some() {}
            if wanted.next_if(|w| *w == name).is_some() {
                out.push(resource.clone());
            }
        }
        out
    }

    /// Whether this proxy has a resource of `kind` for each of `names` (sorted). For
    /// endpoints, one merged walk over the table.
    pub fn has_all<'n>(&self, kind: Kind, names: impl ExactSizeIterator<Item = &'n String>) -> bool {
        if kind != Kind::Endpoint {
            return names.into_iter().all(|name| self.get(kind, name).is_some());
        }
        let table = &self.endpoints.encoded;
        if names.len() < table.len() / 8 {
            return names.into_iter().all(|name| table.contains_key(name));
        }
        let mut table = table.keys().peekable();
        names.into_iter().all(|name| {
            while table.next_if(|t| t.as_str() < name.as_str()).is_some() {}
            table.next_if(|t| *t == name).is_some()
        })
    }

    /// Whether `self` serves `kind` from the very sets `other` does (the same view, inbound side
    /// and endpoint table, or for name tables the same generation): then nothing of the kind
    /// can differ between the two, and a stream that was last diffed against `other` has
    /// nothing of it to send.
    pub(crate) fn same_source(&self, other: &ProxyResources, kind: Kind) -> bool {
        match kind {
            Kind::Endpoint => Arc::ptr_eq(&self.endpoints, &other.endpoints),
            Kind::NameTable => Arc::ptr_eq(&self.generation, &other.generation),
            Kind::Cluster | Kind::Listener | Kind::Route | Kind::Secret | Kind::ExtensionConfig => {
                Arc::ptr_eq(&self.outbound, &other.outbound) && Arc::ptr_eq(&self.inbound, &other.inbound)
            }
        }
    }

    /// Every resource of `kind`, sorted by name.
    pub fn all(&self, kind: Kind) -> Vec<&Arc<EncodedResource>> {
        if kind == Kind::NameTable {
            return self.name_table().values().collect();
        }
        match (self.inbound.map(kind), self.outbound.map(kind)) {
            (Some(inbound), Some(outbound)) if inbound.is_empty() => outbound.values().collect(),
            (Some(inbound), Some(outbound)) => {
                let mut merged: BTreeMap<&str, &Arc<EncodedResource>> =
                    outbound.iter().map(|(name, r)| (name.as_str(), r)).collect();
                merged.extend(inbound.iter().map(|(name, r)| (name.as_str(), r)));
                merged.into_values().collect()
            }
            _ => self.endpoints.encoded.values().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cla(name: &str, port: u32) -> ClusterLoadAssignment {
        use envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints;
        ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints { priority: port, ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn equal_resources_keep_their_encoding_whatever_their_map_order() {
        use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
        let route_config = |timeout: i64| {
            let mut filters = std::collections::HashMap::new();
            for name in ["envoy.filters.http.fault", "envoy.filters.http.cors", "x.y"] {
                filters
                    .insert(name.to_owned(), Any { type_url: format!("type.googleapis.com/{name}"), value: vec![1] });
            }
            let route = Route { typed_per_filter_config: filters, name: format!("r{timeout}"), ..Default::default() };
            RouteConfiguration {
                name: "80".into(),
                virtual_hosts: vec![VirtualHost { name: "a".into(), routes: vec![route], ..Default::default() }],
                ..Default::default()
            }
        };
        let first = EncodedSet::encode(Resources { routes: vec![route_config(1)], ..Default::default() }, None);
        let same = EncodedSet::encode(Resources { routes: vec![route_config(1)], ..Default::default() }, Some(&first));
        assert!(Arc::ptr_eq(&first.routes["80"], &same.routes["80"]));
        let changed =
            EncodedSet::encode(Resources { routes: vec![route_config(2)], ..Default::default() }, Some(&same));
        assert_ne!(changed.routes["80"].hash, same.routes["80"].hash);
    }

    #[test]
    fn unchanged_assignments_keep_their_encoding() {
        let first =
            EndpointTable::build(vec![EncodedAssignment::of(&cla("a", 1)), EncodedAssignment::of(&cla("b", 1))], None);
        let second = EndpointTable::build(
            vec![EncodedAssignment::of(&cla("a", 1)), EncodedAssignment::of(&cla("b", 2))],
            Some(&first),
        );
        assert!(Arc::ptr_eq(&first.encoded["a"], &second.encoded["a"]));
        assert_ne!(first.encoded["b"].hash, second.encoded["b"].hash);
    }

    /// Out of order, with a duplicate name and names the previous table lacks (and lacking
    /// some of its names): the first of the duplicate wins, every unchanged assignment keeps
    /// its resource, and the table equals one built by inserting one at a time.
    #[test]
    fn a_table_of_unsorted_assignments_keeps_first_duplicates_and_unchanged_resources() {
        let encoded = |names: &[(&str, u32)]| names.iter().map(|(n, p)| EncodedAssignment::of(&cla(n, *p))).collect();
        let previous = EndpointTable::build(encoded(&[("b", 1), ("d", 1), ("f", 1), ("h", 1)]), None);
        let table = EndpointTable::build(
            encoded(&[("f", 1), ("a", 1), ("d", 2), ("b", 1), ("d", 3), ("g", 1)]),
            Some(&previous),
        );
        assert_eq!(table.encoded.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b", "d", "f", "g"]);
        for same in ["b", "f"] {
            assert!(Arc::ptr_eq(&previous.encoded[same], &table.encoded[same]), "{same}");
        }
        assert_eq!(table.encoded["d"].value, EncodedAssignment::of(&cla("d", 2)).value);
        let mut one_at_a_time = EndpointTable::default();
        for assignment in encoded(&[("f", 1), ("a", 1), ("d", 2), ("b", 1), ("d", 3), ("g", 1)]) {
            one_at_a_time.insert(assignment, Some(&previous));
        }
        assert_eq!(
            one_at_a_time.encoded.iter().map(|(n, r)| (n, r.hash)).collect::<Vec<_>>(),
            table.encoded.iter().map(|(n, r)| (n, r.hash)).collect::<Vec<_>>()
        );
    }

    /// Every kind served names its type with the static URL, equal to prost's.
    #[test]
    fn served_kinds_have_static_type_urls() {
        fn check<M: Name>() {
            let url = type_url_of::<M>();
            assert!(matches!(url, Cow::Borrowed(_)), "{url}");
            assert_eq!(url, M::type_url());
        }
        use envoy_types::pb::envoy::config::{cluster::v3::Cluster, core::v3::TypedExtensionConfig};
        use envoy_types::pb::envoy::config::{listener::v3::Listener, route::v3::RouteConfiguration};
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
        check::<Cluster>();
        check::<ClusterLoadAssignment>();
        check::<Listener>();
        check::<RouteConfiguration>();
        check::<Secret>();
        check::<TypedExtensionConfig>();
        check::<crate::nametable::NameTable>();
        // A type no kind serves keeps its own.
        let other = type_url_of::<envoy_types::pb::envoy::config::core::v3::Locality>();
        assert_eq!(other, "type.googleapis.com/envoy.config.core.v3.Locality");
    }

    #[test]
    fn versions_round_trip_and_reject_foreign_ones() {
        let hash = content_hash(b"cluster");
        assert_eq!(parse_version(&format_version(hash)), Some(hash));
        for hash in [0, 1, 0xdead_beef, u64::MAX, hash] {
            assert_eq!(format_version(hash), format!("{hash:016x}"));
        }
        assert_eq!(parse_version("2024-01-01T00:00:00Z/3"), None);
        // XXH3's published value for empty input: versions do not depend on this build.
        assert_eq!(content_hash(b""), 0x2d06_8005_38d3_94c2);
    }

    #[test]
    fn duplicate_names_keep_the_first() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        let resources = Resources {
            clusters: vec![
                Cluster { name: "a".into(), ..Default::default() },
                Cluster { name: "a".into(), alt_stat_name: "second".into(), ..Default::default() },
            ],
            ..Default::default()
        };
        let set = EncodedSet::encode(resources.clone(), None);
        assert_eq!(set.clusters.len(), 1);
        assert_eq!(set.clusters["a"].hash, EncodedResource::encode("a".into(), &resources.clusters[0]).hash);
    }
}

/// Incremental endpoint tables against from-scratch ones, over random change sequences.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod incremental_tests {
    use super::*;
    use crate::model::{Endpoint, Protocol, Proxy, Resolution, Service, ServicePort};
    use crate::translate::endpoint;
    use rudder_config::networking::DestinationRule;

    use crate::testing::Rng;

    fn host(i: u64) -> String {
        format!("svc-{i}.ns.svc.cluster.local")
    }

    fn service(i: u64, ports: u64) -> Arc<Service> {
        Arc::new(Service {
            hostname: host(i),
            namespace: "ns".into(),
            name: format!("svc-{i}"),
            ports: (0..ports)
                .map(|p| match p {
                    0 => ServicePort { name: "http-0".into(), port: 8000, protocol: Protocol::Http },
                    // A TCP port: VirtualService TCP routes make its listener's filter chains.
                    _ => ServicePort { name: format!("tcp-{p}"), port: 8000 + p as u32, protocol: Protocol::Tcp },
                })
                .collect(),
            addresses: vec![format!("10.96.0.{i}")],
            // One host in four resolves by DNS: its clusters carry the endpoints inline.
            resolution: if i % 4 == 3 { Resolution::Dns } else { Resolution::ClientSideLb },
            mesh_external: false,
            export_to: vec![],
            kubernetes: true,
            traffic_distribution: Default::default(),
            subject_alt_names: Vec::new(),
        })
    }

    fn endpoints(i: u64, rng: &mut Rng) -> Arc<Vec<Endpoint>> {
        let count = rng.next(4);
        Arc::new(
            (0..count)
                .map(|e| {
                    let mut ep = Endpoint::plain(&format!("10.244.{i}.{e}"), 9000, "http-0", "ns");
                    ep.labels = [("version".to_owned(), format!("v{}", rng.next(2) + 1))].into();
                    // Accounts are the SANs mTLS clusters expect; often unchanged by a change.
                    ep.service_account = ["", "sa-a", "sa-b"][rng.next(3) as usize].to_owned();
                    ep
                })
                .collect(),
        )
    }

    fn rule(name: &str, host: &str, versions: &[u64]) -> Arc<DestinationRule> {
        let subsets: Vec<_> = versions
            .iter()
            .map(|v| serde_json::json!({"name": format!("v{v}"), "labels": {"version": format!("v{v}")}}))
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"host": host, "subsets": subsets},
            }))
            .unwrap(),
        )
    }

    fn mutate(snapshot: &Snapshot, rng: &mut Rng) -> Snapshot {
        let mut next = snapshot.clone();
        for _ in 0..=rng.next(3) {
            let i = rng.next(8);
            match rng.next(6) {
                0 => {
                    next.services.insert(host(i), service(i, 1 + rng.next(2)));
                }
                1 => {
                    next.services.remove(&host(i));
                }
                2 | 3 => {
                    next.endpoints.insert(host(i), endpoints(i, rng));
                }
                4 => {
                    let versions: Vec<u64> = (1..=rng.next(3)).collect();
                    let target = if rng.next(4) == 0 { "*.ns.svc.cluster.local".to_owned() } else { host(i) };
                    next.destination_rules.retain(|r| r.metadata.name.as_deref() != Some(&format!("dr-{i}")));
                    next.destination_rules.push(rule(&format!("dr-{i}"), &target, &versions));
                    next.destination_rules.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
                }
                _ => {
                    next.destination_rules.retain(|r| r.metadata.name.as_deref() != Some(&format!("dr-{i}")));
                }
            }
        }
        next
    }

    /// Even hosts' VirtualServices route TCP too (listeners), odd ones only HTTP (routes).
    fn virtual_service(i: u64, weight: u64) -> Arc<rudder_config::networking::VirtualService> {
        let mut spec = serde_json::json!({"hosts": [host(i)], "http": [{"route": [
            {"destination": {"host": host(i), "subset": "v1"}, "weight": weight},
            {"destination": {"host": host(i), "subset": "v2"}, "weight": 100 - weight},
        ]}]});
        if i.is_multiple_of(2) {
            spec["tcp"] = serde_json::json!([{"route": [
                {"destination": {"host": host(i), "subset": "v1"}, "weight": weight},
                {"destination": {"host": host(i), "subset": "v2"}, "weight": 100 - weight},
            ]}]);
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": format!("vs-{i}"), "namespace": "ns"},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn sidecar(hosts: &[String]) -> Arc<rudder_config::networking::Sidecar> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
                "metadata": {"name": "default", "namespace": "ns"},
                "spec": {"egress": [{"hosts": hosts}]},
            }))
            .unwrap(),
        )
    }

    /// [`mutate`], plus VirtualService and Sidecar changes.
    fn mutate_config(snapshot: &Snapshot, rng: &mut Rng) -> Snapshot {
        let mut next = mutate(snapshot, rng);
        let i = rng.next(8);
        match rng.next(8) {
            0 => {
                next.virtual_services.retain(|v| v.metadata.name.as_deref() != Some(&format!("vs-{i}")));
                next.virtual_services.push(virtual_service(i, rng.next(101)));
                next.virtual_services.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            }
            1 => next.virtual_services.retain(|v| v.metadata.name.as_deref() != Some(&format!("vs-{i}"))),
            2 => {
                let hosts: Vec<String> = (0..=rng.next(3)).map(|h| format!("./{}", host(h * 2))).collect();
                next.sidecars = vec![sidecar(&hosts)];
            }
            3 => next.sidecars.clear(),
            // TLS origination with a Secret, from a rule selecting the workloads of `ns`
            // (a sidecar reads credentialName only then), and the Secret changing.
            4 => {
                next.destination_rules.retain(|r| r.metadata.name.as_deref() != Some("dr-cred"));
                next.destination_rules.push(Arc::new(
                    serde_json::from_value(serde_json::json!({
                        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                        "metadata": {"name": "dr-cred", "namespace": "ns"},
                        "spec": {"host": host(i), "workloadSelector": {"matchLabels": {}},
                                 "trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "cred"}}},
                    }))
                    .unwrap(),
                ));
                next.destination_rules.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            }
            5 => {
                let pem = format!("PEM {}", rng.next(3));
                next.secrets.insert(
                    "ns/cred".into(),
                    Arc::new(crate::model::TlsCredential {
                        certificate_chain: pem.clone().into_bytes(),
                        private_key: b"KEY".to_vec(),
                        ca_certificates: pem.into_bytes(),
                        ..Default::default()
                    }),
                );
            }
            6 => {
                next.secrets.remove("ns/cred");
            }
            // An EnvoyFilter patching every proxy's outbound routes, on or off: the route memo
            // must reuse routes as translated, not as patched (the patch inserts a route in
            // every virtual host, so patching a patched route twice shows).
            _ if next.envoy_filters.is_empty() => next.envoy_filters.push(Arc::new(
                serde_json::from_value(serde_json::json!({
                    "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                    "metadata": {"name": "routes", "namespace": "istio-system"},
                    "spec": {"configPatches": [
                        {"applyTo": "HTTP_ROUTE", "match": {"context": "SIDECAR_OUTBOUND"},
                         "patch": {"operation": "INSERT_FIRST",
                                   "value": {"name": "first", "match": {"prefix": "/first"}, "direct_response": {"status": 204}}}},
                    ]},
                }))
                .unwrap(),
            )),
            _ => next.envoy_filters.clear(),
        }
        next
    }

    /// What a push may skip: an endpoint change leaves a proxy's clusters, listeners and
    /// routes served from the very sets of the last push; a new service does not.
    #[tokio::test]
    async fn a_push_tells_which_kinds_come_from_the_sets_served_before() {
        let generator: Arc<dyn Generator> = Arc::new(crate::server::Translator);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut snapshot = Snapshot::default();
        for i in 0..3 {
            snapshot.services.insert(host(i), service(i, 1));
            snapshot.endpoints.insert(host(i), endpoints(i, &mut rng));
        }
        let proxy =
            Arc::new(Proxy::from_node("sidecar~10.244.9.9~a.ns~ns.svc.cluster.local", &Default::default()).unwrap());
        let push = |snapshot: Snapshot, version: u64, previous: Option<&Generation>| {
            crate::server::push::build_generation(&*generator, Arc::new(snapshot), version, Instant::now(), previous)
        };
        let first = Arc::new(push(snapshot.clone(), 1, None));
        let served = ProxyResources::build(&generator, first.clone(), &proxy, None).await;

        let mut moved = snapshot.clone();
        // A workload relabelled, as the endpoint-change benchmark does (its account, which
        // clusters' SANs name, unchanged).
        let mut relabelled = snapshot.endpoints[&host(1)].as_ref().clone();
        relabelled.push(Endpoint {
            address: "10.244.1.77".into(),
            ..relabelled.first().cloned().unwrap_or_else(|| Endpoint::plain("10.244.1.77", 9000, "http-0", "ns"))
        });
        moved.endpoints.insert(host(1), Arc::new(relabelled));
        let second = Arc::new(push(moved.clone(), 2, Some(&first)));
        let after_endpoints = ProxyResources::build(&generator, second.clone(), &proxy, Some(&served)).await;
        for kind in [Kind::Cluster, Kind::Listener, Kind::Route, Kind::Secret, Kind::ExtensionConfig] {
            assert!(after_endpoints.same_source(&served, kind), "{kind:?} after an endpoint change");
        }
        assert!(!after_endpoints.same_source(&served, Kind::Endpoint));
        assert!(!after_endpoints.same_source(&served, Kind::NameTable), "name tables are per generation");

        let mut grown = moved;
        grown.services.insert(host(5), service(5, 1));
        let third = push(grown, 3, Some(&second));
        let after_service = ProxyResources::build(&generator, Arc::new(third), &proxy, Some(&after_endpoints)).await;
        assert!(!after_service.same_source(&after_endpoints, Kind::Cluster), "a new service's cluster");
        assert!(after_service.get(Kind::Cluster, "outbound|8000||svc-5.ns.svc.cluster.local").is_some());
    }

    /// A view rebuilt from only the kinds a change touched equals one translated from scratch.
    #[tokio::test]
    async fn a_view_or_name_table_no_stream_holds_is_freed() {
        let generator: Arc<dyn Generator> = Arc::new(crate::server::Translator);
        let snapshot = Arc::new(Snapshot::default());
        let generation = Generation::new(1, snapshot.clone(), Instant::now(), EndpointTable::default(), None);
        let proxy = |id: &str| Arc::new(Proxy::from_node(id, &Default::default()).unwrap());
        let held_proxy = proxy("sidecar~10.244.1.1~a.one~one.svc.cluster.local");
        let held = generation.outbound(&generator, &held_proxy).await;
        assert!(Arc::ptr_eq(&held, &generation.outbound(&generator, &held_proxy).await), "a held view is shared");
        // Proxies of 200 namespaces connect and leave while no push comes.
        for i in 0..200 {
            let passing = proxy(&format!("sidecar~10.244.2.{i}~b.ns{i}~ns{i}.svc.cluster.local"));
            let view = Arc::downgrade(&generation.outbound(&generator, &passing).await);
            assert!(view.upgrade().is_none(), "view {i} outlived its stream");
        }
        assert_eq!(generation.view_count(), 1);
        let slots = generation.views.lock().unwrap().len();
        assert!(slots <= VIEW_SWEEP_FROM, "{slots} slots kept for 1 view");
        // NDS name tables, by namespace, likewise.
        let held_table = generation.name_table("one");
        for i in 0..200 {
            let table = Arc::downgrade(&generation.name_table(&format!("ns{i}")));
            assert!(table.upgrade().is_none(), "name table {i} outlived its stream");
        }
        assert!(Arc::ptr_eq(&held_table, &generation.name_table("one")), "a held name table is shared");
        let tables = generation.name_tables.lock().unwrap().len();
        assert!(tables <= VIEW_SWEEP_FROM, "{tables} name tables kept for 1 namespace");
        // The next push starts from the held view only.
        let next = Generation::new(2, snapshot, Instant::now(), EndpointTable::default(), Some(&generation));
        assert_eq!(next.previous_views.lock().unwrap().len(), 1);
        assert!(Arc::ptr_eq(&held, &next.outbound(&generator, &held_proxy).await), "unchanged view reused");
    }

    /// A DNS cluster whose rule fails over by locality: a proxy in a zone gets its own copy,
    /// the zone's endpoints first; the next push keeps that copy's encoding; a proxy with no
    /// place gets the view's.
    #[tokio::test]
    async fn dns_clusters_are_localized_per_place_and_kept_across_pushes() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        let generator: Arc<dyn Generator> = Arc::new(crate::server::Translator);
        let host = "db.example.com";
        let mut snapshot = Snapshot::default();
        let mut db = (*service(3, 1)).clone();
        db.hostname = host.into();
        db.resolution = Resolution::Dns;
        snapshot.services.insert(host.into(), Arc::new(db));
        let located = |ip: &str, locality: &str| Endpoint {
            locality: locality.into(),
            ..Endpoint::plain(ip, 9000, "http-0", "ns")
        };
        snapshot
            .endpoints
            .insert(host.into(), Arc::new(vec![located("10.0.0.1", "r1/z1"), located("10.0.0.2", "r1/z2")]));
        snapshot.destination_rules.push(Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "db", "namespace": "ns"},
                "spec": {"host": host, "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 3}}},
            }))
            .unwrap(),
        ));
        let snapshot = Arc::new(snapshot);
        let name = format!("outbound|8000||{host}");
        let mut zoned = Proxy::from_node("sidecar~10.9.0.1~a.ns~ns.svc.cluster.local", &Default::default()).unwrap();
        zoned.locality = "r1/z2".into();
        let zoned = Arc::new(zoned);
        let nowhere =
            Arc::new(Proxy::from_node("sidecar~10.9.0.2~b.ns~ns.svc.cluster.local", &Default::default()).unwrap());
        let priorities = |resources: &ProxyResources| {
            let encoded = resources.get(Kind::Cluster, &name).unwrap();
            let cluster = Cluster::decode(encoded.value.as_ref()).unwrap();
            cluster
                .load_assignment
                .unwrap()
                .endpoints
                .iter()
                .map(|g| (g.locality.as_ref().map(|l| l.zone.clone()).unwrap_or_default(), g.priority))
                .collect::<Vec<_>>()
        };
        let first = Arc::new(Generation::new(1, snapshot.clone(), Instant::now(), EndpointTable::default(), None));
        let in_zone = ProxyResources::build(&generator, first.clone(), &zoned, None).await;
        assert_eq!(priorities(&in_zone), [("z1".to_owned(), 1), ("z2".to_owned(), 0)]);
        let unplaced = ProxyResources::build(&generator, first.clone(), &nowhere, None).await;
        assert_eq!(priorities(&unplaced), [("z1".to_owned(), 0), ("z2".to_owned(), 0)]);
        // The next push, nothing changed: the copy keeps its encoding (and version).
        let second = Arc::new(Generation::new(2, snapshot, Instant::now(), EndpointTable::default(), Some(&first)));
        let again = ProxyResources::build(&generator, second, &zoned, Some(&in_zone)).await;
        assert!(Arc::ptr_eq(again.get(Kind::Cluster, &name).unwrap(), in_zone.get(Kind::Cluster, &name).unwrap()));
    }

    /// Replicas of one workload (same ports, same policies) share their inbound set; a proxy
    /// whose own side differs gets its own.
    #[tokio::test]
    async fn proxies_with_the_same_inbound_side_share_it() {
        let generator: Arc<dyn Generator> = Arc::new(crate::server::Translator);
        let mut snapshot = Snapshot::default();
        let (web, db) = (service(1, 1), service(2, 2));
        let replica = |ip: &str, port: u32, name: &str| Endpoint {
            workload: "web".into(),
            ..Endpoint::plain(ip, port, name, "ns")
        };
        snapshot.endpoints.insert(
            web.hostname.clone(),
            Arc::new(vec![replica("10.0.0.1", 9000, "http-0"), replica("10.0.0.2", 9000, "http-0")]),
        );
        snapshot.endpoints.insert(db.hostname.clone(), Arc::new(vec![replica("10.0.0.3", 5432, "tcp-1")]));
        snapshot.services.insert(web.hostname.clone(), web);
        snapshot.services.insert(db.hostname.clone(), db);
        let generation =
            Arc::new(Generation::new(1, Arc::new(snapshot), Instant::now(), EndpointTable::default(), None));
        let proxy = |ip: &str| {
            Arc::new(Proxy::from_node(&format!("sidecar~{ip}~p.ns~ns.svc.cluster.local"), &Default::default()).unwrap())
        };
        let mut served = Vec::new();
        for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            served.push(ProxyResources::build(&generator, generation.clone(), &proxy(ip), None).await);
        }
        assert!(!served[0].inbound.listeners.is_empty(), "the replicas have an inbound side");
        assert!(Arc::ptr_eq(&served[0].inbound, &served[1].inbound), "replicas share one set");
        assert!(!Arc::ptr_eq(&served[0].inbound, &served[2].inbound));
        assert!(!served[0].inbound.same_resources(&served[2].inbound), "another port, another set");
        // The next generation shares with the sets of this one.
        let next = Arc::new(Generation::new(
            2,
            generation.snapshot.clone(),
            Instant::now(),
            EndpointTable::default(),
            Some(&generation),
        ));
        let joined = ProxyResources::build(&generator, next, &proxy("10.0.0.2"), None).await;
        assert!(Arc::ptr_eq(&joined.inbound, &served[0].inbound));
    }

    #[test]
    fn incremental_views_equal_a_full_translation() {
        use crate::translate::{self, ViewKey};
        // The third, in capture mode NONE, sits at an endpoint's address (its inbound ports
        // then shape its outbound listeners).
        let none = std::collections::BTreeMap::from([("INTERCEPTION_MODE".to_owned(), serde_json::json!("NONE"))]);
        // The first has a workload certificate: auto mTLS, whose SANs are endpoint accounts.
        let identity = std::collections::BTreeMap::from([(
            crate::model::WORKLOAD_IDENTITY.to_owned(),
            serde_json::json!("spiffe://cluster.local/ns/ns/sa/a"),
        )]);
        let proxies: Vec<Proxy> = [
            ("sidecar~10.244.1.1~a.ns~ns.svc.cluster.local", identity),
            ("sidecar~10.244.1.2~b.other~other.svc.cluster.local", Default::default()),
            ("sidecar~10.244.3.0~c.ns~ns.svc.cluster.local", none),
        ]
        .iter()
        .map(|(id, meta)| Proxy::from_node(id, meta).unwrap())
        .collect();
        let mut rebuilt_partially = 0;
        let mut inbound_kept = 0;
        let mut routes_reused = 0;
        let (mut served_encoded, mut served_inline) = (0, 0);
        let (mut served_routes, mut served_routes_reused) = (0, 0);
        for seed in 1..=25u64 {
            let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
            let mut snapshot = Snapshot::default();
            let mut sets: Vec<EncodedSet> =
                proxies.iter().map(|p| EncodedSet::encode(translate::outbound(&snapshot, p), None)).collect();
            // The same views as discovery serves them: clusters encoded as they are built.
            let mut served: Vec<EncodedSet> =
                proxies.iter().map(|p| EncodedSet::encode(translate::outbound_served(&snapshot, p), None)).collect();
            for step in 0..20 {
                let next = mutate_config(&snapshot, &mut rng);
                let selectors = crate::translate::LabelSelectors::of(&next);
                for ((proxy, set), served) in proxies.iter().zip(sets.iter_mut()).zip(served.iter_mut()) {
                    let parts = translate::changed_parts(&snapshot, &next, &ViewKey::of(proxy, &selectors));
                    if parts.any() && parts != crate::translate::Parts::ALL {
                        rebuilt_partially += 1;
                    }
                    let fresh = translate::outbound_parts(&next, proxy, parts, set.route_memo());
                    *set = EncodedSet::update(Some(set), fresh, parts);
                    routes_reused += set.route_memo().map_or(0, |memo| memo.reused());
                    let full = translate::outbound(&next, proxy);
                    assert!(set.sources() == full, "seed {seed} step {step} {}: {parts:?}", proxy.id);
                    let full_clusters = full.clusters.clone();
                    let full = EncodedSet::encode(full, None);
                    for kind in [Kind::Cluster, Kind::Listener, Kind::Route] {
                        let names = |s: &EncodedSet| s.map(kind).unwrap().keys().cloned().collect::<Vec<_>>();
                        assert_eq!(names(set), names(&full), "seed {seed} step {step}");
                    }
                    let fresh = translate::outbound_parts_served(&next, proxy, parts, served.route_memo());
                    served_encoded += usize::from(!fresh.encoded_clusters.is_empty());
                    served_inline += usize::from(!fresh.encoded_clusters.is_empty() && !fresh.clusters.is_empty());
                    served_routes += usize::from(!fresh.encoded_routes.is_empty());
                    served_routes_reused += served.route_memo().map_or(0, |memo| memo.reused());
                    let before = served.routes.clone();
                    *served = EncodedSet::update(Some(served), fresh, parts);
                    // A route configuration that did not change keeps its version (its bytes are
                    // written alike, memo or not), so it is not pushed again.
                    for (name, old) in before.iter() {
                        let Some(new) = served.routes.get(name) else { continue };
                        let decode = |r: &EncodedResource| RouteConfiguration::decode(r.value.as_ref()).unwrap();
                        if decode(old) == decode(new) {
                            assert_eq!(old.hash, new.hash, "seed {seed} step {step} {}: route {name}", proxy.id);
                        }
                    }
                    assert_served_like(served, &full, &full_clusters, &format!("seed {seed} step {step} {}", proxy.id));
                    // An inbound side kept from the previous push equals a fresh one.
                    if !translate::inbound_changed(&snapshot, &next, proxy) {
                        inbound_kept += 1;
                        let kept = translate::inbound(&snapshot, proxy);
                        assert!(
                            kept == translate::inbound(&next, proxy),
                            "seed {seed} step {step} {}: inbound",
                            proxy.id
                        );
                    }
                }
                snapshot = next;
            }
        }
        assert!(rebuilt_partially > 50, "the sequences exercise partial rebuilds ({rebuilt_partially})");
        assert!(served_encoded > 50, "clusters are served encoded as built ({served_encoded})");
        assert!(served_inline > 10, "with messages for inline endpoints ({served_inline})");
        assert!(served_routes > 50, "route configurations are served encoded as built ({served_routes})");
        assert!(served_routes_reused > 50, "the served path reuses VirtualServices' routes ({served_routes_reused})");
        assert!(inbound_kept > 50, "the sequences keep inbound sides ({inbound_kept})");
        assert!(routes_reused > 50, "the sequences reuse VirtualServices' routes ({routes_reused})");
    }

    /// Clusters appended as messages to a served translation (`Resources::extend`) are served
    /// too, as the message path serves them, and an equal translation keeps every encoding.
    #[test]
    fn clusters_appended_to_a_served_translation_are_served() {
        let snapshot = Snapshot::default();
        let proxy = Proxy::from_node("sidecar~10.9.9.8~p.ns~ns.svc.cluster.local", &Default::default()).unwrap();
        let appended = || Resources {
            clusters: vec![Cluster { name: "inbound|9080||".to_owned(), ..Default::default() }],
            ..Default::default()
        };
        let served = || {
            let mut resources = crate::translate::outbound_served(&snapshot, &proxy);
            assert!(!resources.encoded_clusters.is_empty());
            resources.extend(appended());
            resources
        };
        let mut full = crate::translate::outbound(&snapshot, &proxy);
        full.extend(appended());
        let full = EncodedSet::encode(full, None);
        let set = EncodedSet::encode(served(), None);
        let names = |s: &EncodedSet| s.clusters.keys().cloned().collect::<Vec<_>>();
        assert!(set.clusters.contains_key("inbound|9080||"), "{:?}", names(&set));
        assert_eq!(names(&set), names(&full));
        let hashes = |s: &EncodedSet| s.clusters.values().map(|r| r.hash).collect::<Vec<_>>();
        assert_eq!(hashes(&set), hashes(&full));
        let again = EncodedSet::encode(served(), Some(&set));
        assert!(same_map(&again.clusters, &set.clusters), "an equal translation keeps every encoding");
    }

    /// `served` (a set whose clusters were encoded as they were built) serves what `full` (the
    /// message path's, from `clusters`) does: the same resources, each cluster decoding to the
    /// same message, and with the same bytes where its message has no endpoint metadata.
    fn assert_served_like(served: &EncodedSet, full: &EncodedSet, clusters: &[Cluster], at: &str) {
        for kind in [Kind::Cluster, Kind::Listener, Kind::Route] {
            let names = |s: &EncodedSet| s.map(kind).unwrap().keys().cloned().collect::<Vec<_>>();
            assert_eq!(names(served), names(full), "{at}: {kind:?}");
        }
        let hashes = |s: &EncodedSet| s.listeners.values().map(|r| r.hash).collect::<Vec<_>>();
        assert_eq!(hashes(served), hashes(full), "{at}: listeners");
        // Route configurations served as bytes are written in another field order.
        for route in full.route_source.iter() {
            let decoded = RouteConfiguration::decode(served.routes[&route.name].value.as_ref()).unwrap();
            assert!(decoded == *route, "{at}: route configuration {} differs", route.name);
        }
        for cluster in clusters {
            let resource = &served.clusters[&cluster.name];
            let decoded = Cluster::decode(resource.value.as_ref()).unwrap();
            assert!(decoded == *cluster, "{at}: cluster {} differs", cluster.name);
            if !crate::translate::cluster::has_inline_endpoints(cluster) {
                assert_eq!(resource.hash, full.clusters[&cluster.name].hash, "{at}: cluster {}", cluster.name);
            }
        }
        let inline = |s: &EncodedSet| -> Vec<String> {
            s.cluster_source
                .iter()
                .filter(|c| crate::translate::cluster::has_inline_endpoints(c))
                .map(|c| c.name.clone())
                .collect()
        };
        assert_eq!(inline(served), inline(full), "{at}: the messages kept for localized copies");
    }

    /// A place's endpoint table brought up to date from the previous generation's equals one
    /// localized from scratch, and the changes it records are exactly what differs.
    #[test]
    fn incremental_localized_tables_equal_fresh_ones() {
        use crate::translate::locality::LocalityPolicy;
        // Localities by endpoint position: two zones of r1, one of r2, and none.
        let located = |list: &Arc<Vec<Endpoint>>| {
            let zones = ["r1/z1", "r1/z2", "r2/z1", ""];
            Arc::new(
                list.iter().enumerate().map(|(i, e)| Endpoint { locality: zones[i % 4].into(), ..e.clone() }).collect(),
            )
        };
        let mut proxy = Proxy::from_node("sidecar~10.9.9.9~p.ns~ns.svc.cluster.local", &Default::default()).unwrap();
        proxy.locality = "r1/z1".into();
        // Every host's first port fails over by locality; odd hosts rank by `version` first.
        let policies: Arc<Vec<(String, LocalityPolicy)>> = Arc::new(
            (0..8)
                .map(|i| {
                    let priority_labels = if i % 2 == 1 {
                        vec![crate::translate::locality::PriorityLabel {
                            key: "version".into(),
                            value: Some("v1".into()),
                        }]
                    } else {
                        vec![]
                    };
                    (
                        format!("outbound|8000||{}", host(i)),
                        LocalityPolicy::Failover { priority_labels, regions: vec![] },
                    )
                })
                .collect(),
        );
        let fresh = |snapshot: &Snapshot| {
            let generation = Generation::new(
                0,
                Arc::new(snapshot.clone()),
                Instant::now(),
                EndpointTable::build(endpoint::encoded_all(snapshot), None),
                None,
            );
            generation.endpoints_for(&policies, &proxy)
        };
        let mut deltas = 0;
        for seed in 1..=25u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut snapshot = Snapshot::default();
            let mut generation =
                Generation::new(1, Arc::new(snapshot.clone()), Instant::now(), EndpointTable::default(), None);
            let mut table = generation.endpoints_for(&policies, &proxy);
            for step in 0..25 {
                let mut next = mutate(&snapshot, &mut rng);
                for (host, list) in next.endpoints.iter_mut() {
                    if snapshot.endpoints.get(host).is_none_or(|old| !Arc::ptr_eq(old, list)) {
                        *list = located(list);
                    }
                }
                let held = table.sent_map();
                let shared = match endpoint::changed_hosts(&snapshot, &next) {
                    Some(hosts) => EndpointTable::update(
                        &generation.endpoints,
                        &hosts,
                        endpoint::encoded_for_services(&next, &hosts),
                    ),
                    None => EndpointTable::build(endpoint::encoded_all(&next), Some(&generation.endpoints)),
                };
                let following =
                    Generation::new(step + 2, Arc::new(next.clone()), Instant::now(), shared, Some(&generation));
                let updated = following.endpoints_for(&policies, &proxy);
                let full = fresh(&next);
                let names = |t: &EndpointTable| t.encoded.keys().cloned().collect::<Vec<_>>();
                assert_eq!(names(&updated), names(&full), "seed {seed} step {step}");
                for (name, assignment) in &full.encoded {
                    assert_eq!(assignment.value, updated.encoded[name].value, "seed {seed} step {step}: {name}");
                }
                if let Some(delta) = updated.delta() {
                    deltas += 1;
                    assert!(
                        delta.previous_sent.as_ref().is_some_and(|p| Arc::ptr_eq(p, &held)),
                        "seed {seed} step {step}"
                    );
                    let differing: Vec<&String> = updated
                        .encoded
                        .iter()
                        .filter(|(n, e)| table.encoded.get(*n).is_none_or(|old| old.hash != e.hash))
                        .map(|(n, _)| n)
                        .collect();
                    let mut changed: Vec<&String> = delta.changed.iter().map(|r| &r.name).collect();
                    changed.sort();
                    assert_eq!(changed, differing, "seed {seed} step {step}");
                }
                generation = following;
                table = updated;
                snapshot = next;
            }
        }
        assert!(deltas > 50, "the sequences exercise incremental localized tables ({deltas})");
    }

    #[test]
    fn incremental_endpoints_equal_a_full_translation() {
        let mut deltas = 0;
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut snapshot = Snapshot::default();
            let mut table = EndpointTable::build(endpoint::encoded_all(&snapshot), None);
            for step in 0..30 {
                let next = mutate(&snapshot, &mut rng);
                // Streams hold the whole table's sent map (which makes an update record its delta).
                let held = table.sent_map();
                let updated = match endpoint::changed_hosts(&snapshot, &next) {
                    Some(hosts) => EndpointTable::update(&table, &hosts, endpoint::encoded_for_services(&next, &hosts)),
                    None => EndpointTable::build(endpoint::encoded_all(&next), Some(&table)),
                };
                if let Some(delta) = updated.delta() {
                    deltas += 1;
                    assert!(
                        delta.previous_sent.as_ref().is_some_and(|p| Arc::ptr_eq(p, &held)),
                        "seed {seed} step {step}"
                    );
                    let names = |t: &EndpointTable| t.encoded.keys().cloned().collect::<Vec<_>>();
                    assert_eq!(names(&updated), names(&table), "a delta keeps the names");
                    let differing: Vec<&String> = updated
                        .encoded
                        .iter()
                        .filter(|(n, e)| !Arc::ptr_eq(e, &table.encoded[*n]))
                        .map(|(n, _)| n)
                        .collect();
                    let changed: Vec<&String> = delta.changed.iter().map(|r| &r.name).collect();
                    assert_eq!(changed, differing, "seed {seed} step {step}");
                }
                table = updated;
                let full = EndpointTable::build(endpoint::encoded_all(&next), None);
                let names = |t: &EndpointTable| t.encoded.keys().cloned().collect::<Vec<_>>();
                assert_eq!(names(&table), names(&full), "seed {seed} step {step}");
                for (name, assignment) in &full.encoded {
                    assert_eq!(assignment.value, table.encoded[name].value, "seed {seed} step {step}: {name}");
                    assert_eq!(full.encoded[name].hash, table.encoded[name].hash, "seed {seed} step {step}: {name}");
                }
                // The direct encoding is the canonical encoding of the prost messages, which
                // decode from it unchanged.
                for assignment in endpoint::all(&next) {
                    let encoded = &full.encoded[&assignment.cluster_name];
                    assert_eq!(encoded.value, endpoint::canonical(&assignment), "seed {seed} step {step}");
                    assert_eq!(ClusterLoadAssignment::decode(encoded.value.clone()).unwrap(), assignment);
                }
                snapshot = next;
            }
        }
        assert!(deltas > 50, "the sequences exercise content-only updates ({deltas})");
    }
}

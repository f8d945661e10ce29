//! ClusterLoadAssignments in one canonical encoding, written straight from the registry's
//! endpoints.
//!
//! Building prost messages for every endpoint (an `LbEndpoint` with two metadata `Struct`s, each
//! a `HashMap` with owned strings) and encoding and dropping them was most of a full endpoint
//! rebuild: ~1 µs per endpoint, three times over for a service with two subsets. Here each
//! endpoint's `LbEndpoint` is written once, as bytes, and every assignment that holds it copies
//! those bytes.
//!
//! prost writes map entries in `HashMap` order, so two encodings of one assignment can differ.
//! The canonical encoding fixes that: fields in tag order, as prost writes them, and map
//! entries sorted by key. Equal assignments then have equal bytes, so a table compares bytes,
//! not decoded messages, and versions are stable. [`canonical`] writes any prost
//! `ClusterLoadAssignment` (the locality-weighted copies) this way; the direct writer here
//! gives the same bytes for the same content, which the tests check against it.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value};
use prost::Message;
use prost::bytes::{BufMut, Bytes};
use prost::encoding::{encoded_len_varint, key_len};

use super::{Planned, TLS_MODE_METADATA, WORKLOAD_METADATA, parse_locality, workload_metadata_parts};
use crate::model::Endpoint;
use crate::protowire::{
    delimited_len, put_delimited_header, put_key, put_string_field, put_varint, put_varint_field, string_field_len,
    varint_field_len,
};

/// One ClusterLoadAssignment in the canonical encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedAssignment {
    pub cluster_name: String,
    pub value: Bytes,
}

impl EncodedAssignment {
    /// The canonical encoding of a prost assignment.
    pub fn of(assignment: &ClusterLoadAssignment) -> Self {
        Self { cluster_name: assignment.cluster_name.clone(), value: Bytes::from(canonical(assignment)) }
    }
}

/// The only status an assignment carries (endpoints in other states are left out).
const HEALTHY: u64 = HealthStatus::Healthy as u64;

/// Writes the planned assignments of one service: every member's `LbEndpoint` is encoded once
/// into a scratch buffer, then each assignment is written at its exact size.
pub(super) fn write_service(endpoints: &[Endpoint], plans: Vec<Planned<'_>>, out: &mut Vec<EncodedAssignment>) {
    let mut scratch = Vec::new();
    let mut spans: Vec<Option<(usize, usize)>> = vec![None; endpoints.len()];
    for plan in &plans {
        for &i in plan.groups.iter().flat_map(|(_, members)| members) {
            if spans[i].is_none() {
                let start = scratch.len();
                put_lb_endpoint_body(&endpoints[i], &mut scratch);
                spans[i] = Some((start, scratch.len()));
            }
        }
    }
    let bytes_of = |i: usize| spans[i].map_or(&[][..], |(start, end)| &scratch[start..end]);
    for plan in plans {
        let groups: Vec<GroupLayout> = plan
            .groups
            .iter()
            .map(|(locality, members)| {
                let locality = parse_locality(locality);
                let weight = members.iter().map(|&i| endpoints[i].weight.max(1)).fold(0u32, u32::saturating_add).max(1);
                let endpoints_len: usize = members.iter().map(|&i| delimited_len(2, bytes_of(i).len())).sum();
                let body = locality.as_ref().map_or(0, |l| delimited_len(1, l.encoded_len()))
                    + endpoints_len
                    + delimited_len(3, varint_field_len(1, u64::from(weight)));
                GroupLayout { locality, weight, body }
            })
            .collect();
        let len = string_field_len(1, plan.cluster_name.as_bytes())
            + groups.iter().map(|g| delimited_len(2, g.body)).sum::<usize>();
        let mut value = Vec::with_capacity(len);
        put_string_field(1, plan.cluster_name.as_bytes(), &mut value);
        for (layout, (_, members)) in groups.iter().zip(&plan.groups) {
            put_delimited_header(2, layout.body, &mut value);
            if let Some(locality) = &layout.locality {
                put_delimited_header(1, locality.encoded_len(), &mut value);
                locality.encode_raw(&mut value);
            }
            for &i in members {
                put_delimited_header(2, bytes_of(i).len(), &mut value);
                value.put_slice(bytes_of(i));
            }
            put_delimited_header(3, varint_field_len(1, u64::from(layout.weight)), &mut value);
            put_varint_field(1, u64::from(layout.weight), &mut value);
        }
        debug_assert_eq!(value.len(), len);
        out.push(EncodedAssignment { cluster_name: plan.cluster_name, value: Bytes::from(value) });
    }
}

/// A locality group's fields, measured before it is written.
struct GroupLayout {
    locality: Option<Locality>,
    weight: u32,
    body: usize,
}

/// The body of `endpoint::lb_endpoint(endpoint)` in the canonical encoding: its socket address,
/// health, metadata and weight.
fn put_lb_endpoint_body(endpoint: &Endpoint, out: &mut Vec<u8>) {
    let port = u64::from(endpoint.port);
    // SocketAddress: address (2), port_value (3, a oneof member: written even when zero).
    let socket = string_field_len(2, endpoint.address.as_bytes()) + key_len(3) + encoded_len_varint(port);
    let address = delimited_len(1, socket);
    let host = delimited_len(1, address);
    // The entries read the endpoint's labels: once, for both measuring and writing.
    let entries = metadata_entries(endpoint);
    let metadata = endpoint_metadata_len(&entries);
    let weight = u64::from(endpoint.weight.max(1));
    let len = delimited_len(1, host)
        + varint_field_len(2, HEALTHY)
        + metadata.map_or(0, |m| delimited_len(3, m))
        + delimited_len(4, varint_field_len(1, weight));
    out.reserve(len);
    put_delimited_header(1, host, out);
    put_delimited_header(1, address, out);
    put_delimited_header(1, socket, out);
    put_string_field(2, endpoint.address.as_bytes(), out);
    put_key(3, prost::encoding::WireType::Varint, out);
    put_varint(port, out);
    put_varint_field(2, HEALTHY, out);
    if let Some(metadata) = metadata {
        put_delimited_header(3, metadata, out);
        put_endpoint_metadata(&entries, out);
    }
    put_delimited_header(4, varint_field_len(1, weight), out);
    put_varint_field(1, weight, out);
}

/// One namespace of an endpoint's metadata with its one field and text.
type MetadataEntry<'e> = (&'static str, &'static str, TextParts<'e>);

/// The namespaces of an endpoint's metadata, in key order, each with its one field and text.
fn metadata_entries(endpoint: &Endpoint) -> [Option<MetadataEntry<'_>>; 2] {
    let tls = (!endpoint.tls_mode.is_empty()).then_some((
        TLS_MODE_METADATA.0,
        TLS_MODE_METADATA.1,
        TextParts::One(endpoint.tls_mode.as_str()),
    ));
    let workload = (!endpoint.workload.is_empty())
        .then(|| (WORKLOAD_METADATA.0, WORKLOAD_METADATA.1, TextParts::Workload(workload_metadata_parts(endpoint))));
    debug_assert!(TLS_MODE_METADATA.0 < WORKLOAD_METADATA.0, "entries are written in key order");
    [tls, workload]
}

/// A metadata string written from pieces, so the workload text is never built as a `String`.
enum TextParts<'e> {
    One(&'e str),
    /// `name;namespace;canonical name;canonical revision;`
    Workload([&'e str; 4]),
}

impl TextParts<'_> {
    fn len(&self) -> usize {
        match self {
            TextParts::One(text) => text.len(),
            TextParts::Workload(parts) => parts.iter().map(|p| p.len() + 1).sum(),
        }
    }

    fn put(&self, out: &mut Vec<u8>) {
        match self {
            TextParts::One(text) => out.put_slice(text.as_bytes()),
            TextParts::Workload(parts) => {
                for part in parts {
                    out.put_slice(part.as_bytes());
                    out.put_u8(b';');
                }
            }
        }
    }
}

/// Lengths of one `filter_metadata` entry holding a one-field `Struct` with a string value:
/// (entry body, struct body, field entry body, value body).
fn one_field_entry_lens(namespace: &str, field: &str, text_len: usize) -> (usize, usize, usize, usize) {
    let value = delimited_len(3, text_len);
    let field_entry = string_field_len(1, field.as_bytes()) + delimited_len(2, value);
    let structure = delimited_len(1, field_entry);
    let entry = string_field_len(1, namespace.as_bytes()) + delimited_len(2, structure);
    (entry, structure, field_entry, value)
}

fn endpoint_metadata_len(entries: &[Option<MetadataEntry<'_>>]) -> Option<usize> {
    let mut entries = entries.iter().flatten().peekable();
    entries.peek()?;
    Some(
        entries
            .map(|(namespace, field, text)| delimited_len(1, one_field_entry_lens(namespace, field, text.len()).0))
            .sum(),
    )
}

fn put_endpoint_metadata(entries: &[Option<MetadataEntry<'_>>], out: &mut Vec<u8>) {
    for (namespace, field, text) in entries.iter().flatten() {
        let (entry, structure, field_entry, value) = one_field_entry_lens(namespace, field, text.len());
        put_delimited_header(1, entry, out);
        put_string_field(1, namespace.as_bytes(), out);
        put_delimited_header(2, structure, out);
        put_delimited_header(1, field_entry, out);
        put_string_field(1, field.as_bytes(), out);
        put_delimited_header(2, value, out);
        put_delimited_header(3, text.len(), out);
        text.put(out);
    }
}

/// The canonical encoding of any `ClusterLoadAssignment`: prost's, with map entries sorted by
/// key. Each nested message's length is computed before it is written (`*_len` beside each
/// `put_*`), so the assignment is written once, into a buffer of its size.
pub fn canonical(assignment: &ClusterLoadAssignment) -> Vec<u8> {
    let mut out = Vec::with_capacity(assignment.encoded_len());
    put_string_field(1, assignment.cluster_name.as_bytes(), &mut out);
    for group in &assignment.endpoints {
        put_delimited_header(2, locality_group_len(group), &mut out);
        put_locality_group(group, &mut out);
    }
    if let Some(policy) = &assignment.policy {
        prost::encoding::message::encode(4, policy, &mut out);
    }
    put_sorted_map(5, &assignment.named_endpoints, &mut out, Message::encoded_len, |e, out| e.encode_raw(out));
    out
}

fn locality_group_len(group: &LocalityLbEndpoints) -> usize {
    group.locality.as_ref().map_or(0, |l| prost::encoding::message::encoded_len(1, l))
        + group.lb_endpoints.iter().map(|e| delimited_len(2, lb_endpoint_len(e))).sum::<usize>()
        + group.load_balancing_weight.as_ref().map_or(0, |w| prost::encoding::message::encoded_len(3, w))
        + varint_field_len(5, u64::from(group.priority))
        + group.proximity.as_ref().map_or(0, |p| prost::encoding::message::encoded_len(6, p))
        + group.lb_config.as_ref().map_or(0, |c| c.encoded_len())
        + group.metadata.as_ref().map_or(0, |m| delimited_len(9, metadata_len(m)))
}

fn put_locality_group(group: &LocalityLbEndpoints, out: &mut Vec<u8>) {
    if let Some(locality) = &group.locality {
        prost::encoding::message::encode(1, locality, out);
    }
    for endpoint in &group.lb_endpoints {
        put_delimited_header(2, lb_endpoint_len(endpoint), out);
        put_lb_endpoint(endpoint, out);
    }
    if let Some(weight) = &group.load_balancing_weight {
        prost::encoding::message::encode(3, weight, out);
    }
    put_varint_field(5, u64::from(group.priority), out);
    if let Some(proximity) = &group.proximity {
        prost::encoding::message::encode(6, proximity, out);
    }
    if let Some(config) = &group.lb_config {
        config.encode(out);
    }
    if let Some(metadata) = &group.metadata {
        put_delimited_header(9, metadata_len(metadata), out);
        put_metadata(metadata, out);
    }
}

fn lb_endpoint_len(endpoint: &LbEndpoint) -> usize {
    endpoint.host_identifier.as_ref().map_or(0, |h| h.encoded_len())
        + if endpoint.health_status != 0 { prost::encoding::int32::encoded_len(2, &endpoint.health_status) } else { 0 }
        + endpoint.metadata.as_ref().map_or(0, |m| delimited_len(3, metadata_len(m)))
        + endpoint.load_balancing_weight.as_ref().map_or(0, |w| prost::encoding::message::encoded_len(4, w))
}

fn put_lb_endpoint(endpoint: &LbEndpoint, out: &mut Vec<u8>) {
    if let Some(host) = &endpoint.host_identifier {
        host.encode(out);
    }
    if endpoint.health_status != 0 {
        prost::encoding::int32::encode(2, &endpoint.health_status, out);
    }
    if let Some(metadata) = &endpoint.metadata {
        put_delimited_header(3, metadata_len(metadata), out);
        put_metadata(metadata, out);
    }
    if let Some(weight) = &endpoint.load_balancing_weight {
        prost::encoding::message::encode(4, weight, out);
    }
}

fn metadata_len(metadata: &Metadata) -> usize {
    map_len(1, &metadata.filter_metadata, struct_len)
        + map_len(2, &metadata.typed_filter_metadata, Message::encoded_len)
}

fn put_metadata(metadata: &Metadata, out: &mut Vec<u8>) {
    put_sorted_map(1, &metadata.filter_metadata, out, struct_len, put_struct);
    put_sorted_map(2, &metadata.typed_filter_metadata, out, Message::encoded_len, |any, out| any.encode_raw(out));
}

fn struct_len(structure: &Struct) -> usize {
    map_len(1, &structure.fields, value_len)
}

fn put_struct(structure: &Struct, out: &mut Vec<u8>) {
    put_sorted_map(1, &structure.fields, out, value_len, put_value);
}

fn value_len(value: &Value) -> usize {
    match &value.kind {
        None => 0,
        Some(value::Kind::StructValue(structure)) => delimited_len(5, struct_len(structure)),
        Some(value::Kind::ListValue(list)) => delimited_len(6, list_len(list)),
        Some(kind) => kind.encoded_len(),
    }
}

fn list_len(list: &ListValue) -> usize {
    list.values.iter().map(|v| delimited_len(1, value_len(v))).sum()
}

fn put_value(value: &Value, out: &mut Vec<u8>) {
    match &value.kind {
        None => {}
        Some(value::Kind::StructValue(structure)) => {
            put_delimited_header(5, struct_len(structure), out);
            put_struct(structure, out);
        }
        Some(value::Kind::ListValue(list)) => {
            put_delimited_header(6, list_len(list), out);
            for value in &list.values {
                put_delimited_header(1, value_len(value), out);
                put_value(value, out);
            }
        }
        Some(kind) => kind.encode(out),
    }
}

/// Length of a map entry's body: its key, and its value unless default (prost leaves out an
/// empty key and a default value, and so does the canonical form).
fn entry_len<V: Default + PartialEq>(key: &str, value: &V, len: impl Fn(&V) -> usize) -> usize {
    string_field_len(1, key.as_bytes()) + if *value == V::default() { 0 } else { delimited_len(2, len(value)) }
}

/// Length of a `map<string, V>` field (order does not change it).
fn map_len<V: Default + PartialEq>(tag: u32, map: &HashMap<String, V>, len: impl Fn(&V) -> usize) -> usize {
    map.iter().map(|(key, value)| delimited_len(tag, entry_len(key, value, &len))).sum()
}

/// A `map<string, V>` field, entries in key order.
fn put_sorted_map<V: Default + PartialEq>(
    tag: u32,
    map: &HashMap<String, V>,
    out: &mut Vec<u8>,
    len: impl Fn(&V) -> usize,
    put: impl Fn(&V, &mut Vec<u8>),
) {
    let mut entries: Vec<(&String, &V)> = map.iter().collect();
    entries.sort_unstable_by_key(|(key, _)| *key);
    for (key, value) in entries {
        put_delimited_header(tag, entry_len(key, value, &len), out);
        put_string_field(1, key.as_bytes(), out);
        if *value != V::default() {
            put_delimited_header(2, len(value), out);
            put(value, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Maps are written in key order whatever order the `HashMap`s hold them in, nested
    /// structs and lists included; the result decodes to the same message.
    #[test]
    fn canonical_encoding_does_not_depend_on_map_order() {
        let text = |s: &str| Value { kind: Some(value::Kind::StringValue(s.to_owned())) };
        let structure = |keys: &[&str]| Struct { fields: keys.iter().map(|k| ((*k).to_owned(), text(k))).collect() };
        let keys: Vec<String> = (0..16).map(|i| format!("key-{i}")).collect();
        let assignment = |order: &mut dyn Iterator<Item = &String>| {
            let mut metadata = Metadata::default();
            for key in order {
                let nested = Value {
                    kind: Some(value::Kind::ListValue(ListValue {
                        values: vec![
                            Value { kind: Some(value::Kind::StructValue(structure(&["b", "a", "c"]))) },
                            Value::default(),
                            text(key),
                        ],
                    })),
                };
                let mut fields = structure(&["z", "y"]);
                fields.fields.insert(key.clone(), nested);
                metadata.filter_metadata.insert(key.clone(), fields);
            }
            ClusterLoadAssignment {
                cluster_name: "c".into(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint { metadata: Some(metadata.clone()), ..Default::default() }],
                    metadata: Some(metadata),
                    priority: 2,
                    ..Default::default()
                }],
                ..Default::default()
            }
        };
        let forward = assignment(&mut keys.iter());
        let backward = assignment(&mut keys.iter().rev());
        assert_eq!(forward, backward);
        assert_eq!(canonical(&forward), canonical(&backward));
        assert_eq!(ClusterLoadAssignment::decode(canonical(&forward).as_slice()).unwrap(), forward);
        assert_eq!(canonical(&forward).len(), forward.encoded_len());
    }
}

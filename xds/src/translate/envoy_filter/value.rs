//! Patch values as Envoy messages: the protobuf JSON of a patch decoded with Envoy's descriptors
//! (`@type` resolved among them), and protobuf merge of one message into another.
//!
//! The descriptors are `envoy_descriptors.bin`, written from envoy-types' own descriptor set by
//! `scripts/envoy-descriptors.py` (CI checks that it matches the envoy-types in Cargo.lock), so
//! every message discovery can build, and every extension Envoy 1.40's API names, decodes.

use std::sync::OnceLock;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor};

static DESCRIPTORS: &[u8] = include_bytes!("envoy_descriptors.bin");

/// Envoy's descriptors, decoded on first use.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::new();
        // The file is checked against envoy-types by CI and by a test; a failure here is a
        // broken build, not bad input.
        #[allow(clippy::expect_used)]
        pool.decode_file_descriptor_set(DESCRIPTORS).expect("envoy_descriptors.bin is a valid descriptor set");
        pool
    })
}

/// Why a value could not be had: the field (a JSON path inside the patch value, empty for the
/// value itself) and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub field: String,
    pub reason: String,
}

impl Failure {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// A patch value decoded as the message `type_name`: its protobuf encoding, ready to decode as
/// the matching envoy-types struct or to merge into one. `ignored` names unknown fields that
/// were left out (as Istio does: a newer Envoy field must not take the patch down), for a warning.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub bytes: Vec<u8>,
    pub ignored: Option<Failure>,
}

fn descriptor(type_name: &str) -> Result<MessageDescriptor, Failure> {
    pool().get_message_by_name(type_name).ok_or_else(|| Failure::new("", format!("unknown message type {type_name}")))
}

fn decode_json(desc: MessageDescriptor, json: &serde_json::Value, strict: bool) -> Result<DynamicMessage, Failure> {
    let options = DeserializeOptions::new().deny_unknown_fields(strict);
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(json, &mut track);
    DynamicMessage::deserialize_with_options(desc, deserializer, &options).map_err(|error| {
        let reason = error.to_string();
        let mut path = track.path().to_string();
        if path == "." {
            path.clear();
        }
        // An unknown field is reported at its parent: name it.
        if let Some(name) = reason.strip_prefix("unrecognized field name '").and_then(|rest| rest.split('\'').next()) {
            path = if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") };
        }
        Failure::new(path, reason)
    })
}

/// Decodes `json` as a `type_name` message. Unknown fields are dropped (and named in
/// `ignored`); anything else that does not fit (a wrong type, an unknown `@type`) fails.
pub fn decode(type_name: &str, json: &serde_json::Map<String, serde_json::Value>) -> Result<Value, Failure> {
    let desc = descriptor(type_name)?;
    let json = serde_json::Value::Object(json.clone());
    match decode_json(desc.clone(), &json, true) {
        Ok(message) => Ok(Value { bytes: message.encode_to_vec(), ignored: None }),
        Err(strict) => {
            let message = decode_json(desc, &json, false)?;
            Ok(Value { bytes: message.encode_to_vec(), ignored: Some(strict) })
        }
    }
}

/// The message type an `Any` holds.
pub fn any_type(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or_default()
}

/// Merges `src` into `dst` inside the `Any` (protobuf merge of the two messages), for Any
/// values of the same type: what Istio does for the typed config of a filter a MERGE patch
/// names. `src`'s type is taken as `dst`'s.
pub fn merge_any(dst: &mut Any, src: &Any) -> Result<(), Failure> {
    let type_name = any_type(dst).to_owned();
    let desc = descriptor(&type_name)?;
    let mut message = DynamicMessage::decode(desc, dst.value.as_slice())
        .map_err(|e| Failure::new("typedConfig", format!("the generated {type_name} does not decode: {e}")))?;
    message
        .merge(src.value.as_slice())
        .map_err(|e| Failure::new("typedConfig", format!("the patch's typed config is not a {type_name}: {e}")))?;
    dst.value = message.encode_to_vec();
    Ok(())
}

/// `M` from a decoded value.
pub fn message<M: Message + Default>(value: &Value) -> Result<M, Failure> {
    M::decode(value.bytes.as_slice()).map_err(|e| Failure::new("", format!("does not decode: {e}")))
}

/// Protobuf merge of the value into `dst` (scalars set in the value replace, messages merge,
/// repeated fields append, maps merge by key).
pub fn merge_into<M: Message>(dst: &mut M, value: &Value) -> Result<(), Failure> {
    dst.merge(value.bytes.as_slice()).map_err(|e| Failure::new("", format!("does not merge: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn json(text: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_descriptors_hold_what_patches_name() {
        for name in [
            "envoy.config.listener.v3.Listener",
            "envoy.config.cluster.v3.Cluster",
            "envoy.config.route.v3.RouteConfiguration",
            "envoy.extensions.filters.http.lua.v3.Lua",
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        ] {
            assert!(pool().get_message_by_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn values_decode_with_their_any_types_and_name_the_bad_field() {
        let value = decode(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
            &json(
                r#"{"name": "envoy.filters.http.lua", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua", "defaultSourceCode": {"inlineString": "x"}}}"#,
            ),
        )
        .unwrap();
        assert_eq!(value.ignored, None);
        let unknown_type = decode(
            "envoy.config.listener.v3.Filter",
            &json(r#"{"name": "x", "typedConfig": {"@type": "type.googleapis.com/no.such.Type"}}"#),
        )
        .unwrap_err();
        assert_eq!(unknown_type.field, "typedConfig", "{unknown_type:?}");
        let wrong = decode("envoy.config.cluster.v3.Cluster", &json(r#"{"connectTimeout": 5}"#)).unwrap_err();
        assert_eq!(wrong.field, "connectTimeout", "{wrong:?}");
        let unknown_field =
            decode("envoy.config.cluster.v3.Cluster", &json(r#"{"name": "a", "noSuchField": 1}"#)).unwrap();
        assert_eq!(unknown_field.ignored.as_ref().map(|f| f.field.as_str()), Some("noSuchField"), "{unknown_field:?}");
        let cluster: Cluster = message(&unknown_field).unwrap();
        assert_eq!(cluster.name, "a");
    }
}

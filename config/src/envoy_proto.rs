//! Envoy's protobuf API as descriptors, for the one kind that carries raw Envoy config:
//! EnvoyFilter patch values are protobuf JSON (a `google.protobuf.Struct` in the CR) of the
//! Envoy message their `applyTo` names, with `@type` naming the message of each `Any`.
//!
//! The descriptors are `envoy_descriptors.bin`, written from the FileDescriptorSet that the
//! envoy-types crate (the Rust types discovery builds Envoy config with) ships, by
//! `scripts/envoy-descriptors.py`; CI checks that the file matches the envoy-types in
//! Cargo.lock. Validation decodes patch values with them; discovery applies the patches.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor};

use crate::networking::envoy_filter::ApplyTo;

static DESCRIPTORS: &[u8] = include_bytes!("envoy_descriptors.bin");

/// Envoy's descriptors, decoded on first use.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::new();
        // The file is generated and checked by CI and a test: a failure is a broken build,
        // not bad input.
        #[allow(clippy::expect_used)]
        pool.decode_file_descriptor_set(DESCRIPTORS).expect("envoy_descriptors.bin is a valid descriptor set");
        pool
    })
}

/// The Envoy message a patch value of `apply_to` is.
pub fn message_type(apply_to: ApplyTo) -> Option<&'static str> {
    Some(match apply_to {
        ApplyTo::Listener => "envoy.config.listener.v3.Listener",
        ApplyTo::FilterChain => "envoy.config.listener.v3.FilterChain",
        ApplyTo::NetworkFilter => "envoy.config.listener.v3.Filter",
        ApplyTo::ListenerFilter => "envoy.config.listener.v3.ListenerFilter",
        ApplyTo::HttpFilter => "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        ApplyTo::RouteConfiguration => "envoy.config.route.v3.RouteConfiguration",
        ApplyTo::VirtualHost => "envoy.config.route.v3.VirtualHost",
        ApplyTo::HttpRoute => "envoy.config.route.v3.Route",
        ApplyTo::Cluster => "envoy.config.cluster.v3.Cluster",
        ApplyTo::ExtensionConfig => "envoy.config.core.v3.TypedExtensionConfig",
        ApplyTo::Bootstrap => "envoy.config.bootstrap.v3.Bootstrap",
        ApplyTo::Invalid => return None,
    })
}

/// Why a value could not be had: the field (a JSON path inside the value, empty for the value
/// itself) and the reason.
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

/// A value decoded as an Envoy message: its protobuf encoding. `ignored` names an unknown
/// field that was left out (as Istio does, so that a field of a newer Envoy does not take the
/// patch down), for a warning.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub bytes: Vec<u8>,
    pub ignored: Option<Failure>,
}

/// The descriptor of an Envoy message.
pub fn descriptor(type_name: &str) -> Result<MessageDescriptor, Failure> {
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
/// `ignored`); anything else that does not fit (a value of the wrong type, an unknown
/// `@type`) fails, naming the field.
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
            "envoy.config.bootstrap.v3.Bootstrap",
            "udpa.type.v1.TypedStruct",
            "xds.type.v3.TypedStruct",
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
        let typed_struct = decode(
            "envoy.config.listener.v3.Filter",
            &json(
                r#"{"name": "x", "typedConfig": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "typeUrl": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "value": {"statPrefix": "x", "cluster": "c"}}}"#,
            ),
        );
        assert!(typed_struct.is_ok_and(|v| v.ignored.is_none()));
        let unknown_type = decode(
            "envoy.config.listener.v3.Filter",
            &json(r#"{"name": "x", "typedConfig": {"@type": "type.googleapis.com/no.such.Type"}}"#),
        )
        .unwrap_err();
        assert_eq!(unknown_type.field, "typedConfig", "{unknown_type:?}");
        let wrong = decode("envoy.config.cluster.v3.Cluster", &json(r#"{"connectTimeout": 5}"#)).unwrap_err();
        assert_eq!(wrong.field, "connectTimeout", "{wrong:?}");
        let unknown_field = decode(
            "envoy.config.cluster.v3.Cluster",
            &json(r#"{"name": "a", "lbPolicy": "ROUND_ROBIN", "noSuchField": 1}"#),
        )
        .unwrap();
        assert_eq!(unknown_field.ignored.as_ref().map(|f| f.field.as_str()), Some("noSuchField"), "{unknown_field:?}");
    }
}

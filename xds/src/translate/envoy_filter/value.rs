//! Patch values as Envoy messages: decoded from protobuf JSON by [`rudder_config::envoy_proto`]
//! (Envoy's descriptors, `@type` resolved among them), then read as envoy-types structs or
//! merged into them (protobuf merge), and the merge inside a typed config Istio does for
//! filters and transport sockets.

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost_reflect::DynamicMessage;
pub use rudder_config::envoy_proto::{Failure, Value, decode, descriptor, message_type, pool};

/// The message type an `Any` holds.
pub fn any_type(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or_default()
}

/// Merges `src` into `dst` inside the `Any` (protobuf merge of the two messages): what Istio
/// does for the typed config of a filter a MERGE patch names. `src` is read as `dst`'s type.
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

    #[test]
    fn decoded_values_read_as_envoy_types() {
        let json = serde_json::from_str(r#"{"name": "a", "connectTimeout": "2s", "noSuchField": 1}"#).unwrap();
        let value = decode("envoy.config.cluster.v3.Cluster", &json).unwrap();
        let cluster: Cluster = message(&value).unwrap();
        assert_eq!((cluster.name.as_str(), cluster.connect_timeout.map(|d| d.seconds)), ("a", Some(2)));
        let mut generated = Cluster { name: "b".into(), ..Default::default() };
        merge_into(&mut generated, &value).unwrap();
        assert_eq!(generated.name, "a");
    }
}

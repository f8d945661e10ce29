//! Protobuf fields written by hand, for messages assembled from bytes that are already encoded
//! (ADS responses from shared resources) or encoded without building prost structs first
//! (endpoint assignments). Lengths are computed up front, so a message is written once into a
//! buffer of its exact size.

use prost::bytes::BufMut;
use prost::encoding::{WireType, encoded_len_varint, key_len};

/// Length of a string or bytes field (tag, length, bytes); 0 for an empty one, which proto3
/// omits.
pub fn string_field_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() { 0 } else { delimited_len(tag, value.len()) }
}

/// Length of a length-delimited field of `len` bytes, written even when empty (a sub-message
/// that is present, a oneof string).
pub fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Length of a varint field holding `value`; 0 for zero, which proto3 omits.
pub fn varint_field_len(tag: u32, value: u64) -> usize {
    if value == 0 { 0 } else { key_len(tag) + encoded_len_varint(value) }
}

/// Writes a string or bytes field, nothing for an empty one.
pub fn put_string_field(tag: u32, value: &[u8], out: &mut impl BufMut) {
    if !value.is_empty() {
        put_delimited_header(tag, value.len(), out);
        out.put_slice(value);
    }
}

/// Writes the key and length of a length-delimited field whose `len` bytes follow.
pub fn put_delimited_header(tag: u32, len: usize, out: &mut impl BufMut) {
    put_key(tag, WireType::LengthDelimited, out);
    put_varint(len as u64, out);
}

/// Writes a varint field, nothing for zero.
pub fn put_varint_field(tag: u32, value: u64, out: &mut impl BufMut) {
    if value != 0 {
        put_key(tag, WireType::Varint, out);
        put_varint(value, out);
    }
}

/// Writes a field key.
pub fn put_key(tag: u32, wire_type: WireType, out: &mut impl BufMut) {
    put_varint(u64::from(tag << 3 | wire_type as u32), out);
}

/// Writes a varint with one bounds check: prost's writes it a byte at a time, which showed
/// as a sixth of an endpoint rebuild (perf), every field of every endpoint having two.
#[inline]
pub fn put_varint(mut value: u64, out: &mut impl BufMut) {
    let mut bytes = [0u8; 10];
    let mut len = 0;
    while value >= 0x80 {
        bytes[len] = value as u8 | 0x80;
        value >>= 7;
        len += 1;
    }
    bytes[len] = value as u8;
    out.put_slice(&bytes[..=len]);
}

/// Appends `message`'s fields (no key, no length: the body of a field whose header is written).
pub fn put_message_fields(message: &impl prost::Message, out: &mut Vec<u8>) {
    // `encode_raw`: `encode` would measure the whole message first only to check the room a
    // `Vec` makes anyway, and callers have measured it already for its header.
    message.encode_raw(out);
}

/// Offset of the first top-level field of `message` whose tag is above `tag`, or its length
/// when there is none: where prost, which writes fields in tag order, would have put a field
/// `tag`. `None` when `message` is not a well-formed encoding.
pub fn first_field_after(message: &[u8], tag: u32) -> Option<usize> {
    let mut rest = message;
    while !rest.is_empty() {
        let at = message.len() - rest.len();
        let key = prost::encoding::decode_varint(&mut rest).ok()?;
        if key >> 3 > u64::from(tag) {
            return Some(at);
        }
        let skip = match WireType::try_from(key & 7).ok()? {
            WireType::Varint => {
                prost::encoding::decode_varint(&mut rest).ok()?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?,
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        rest = rest.get(skip..)?;
    }
    Some(message.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::UInt32Value;
    use prost::Message;

    /// A field inserted where `first_field_after` says lands where prost writes it, whatever
    /// the wire types before and after it; malformed input is refused, not misread.
    #[test]
    fn first_field_after_finds_proses_place() {
        use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
        use envoy_types::pb::envoy::config::core::v3::Metadata;
        use envoy_types::pb::google::protobuf::Duration;
        let full = Cluster {
            name: "c".into(),
            connect_timeout: Some(Duration { seconds: 1, nanos: 0 }),
            per_connection_buffer_limit_bytes: Some(UInt32Value { value: 7 }),
            metadata: Some(Metadata::default()),
            close_connections_on_host_health_failure: true,
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(3)),
            lb_policy: 2,
            alt_stat_name: "c;".into(),
            ..Default::default()
        };
        let without = Cluster { metadata: None, ..full.clone() };
        let mut bytes = without.encode_to_vec();
        let at = first_field_after(&bytes, 25).unwrap();
        let mut field = Vec::new();
        prost::encoding::message::encode(25, full.metadata.as_ref().unwrap(), &mut field);
        bytes.splice(at..at, field);
        assert_eq!(bytes, full.encode_to_vec());
        assert_eq!(first_field_after(&bytes, 1000), Some(bytes.len()));
        assert_eq!(first_field_after(&[], 1), Some(0));
        assert_eq!(first_field_after(&[0x0a, 0x05, b'a'], 1), None, "a length past the end");
        assert_eq!(first_field_after(&[0x0b], 1), None, "a group");
    }

    /// Varints and keys as prost writes them, at every length a varint can have.
    #[test]
    fn varints_match_prost() {
        let values = (0..64).flat_map(|shift| [(1u64 << shift) - 1, 1u64 << shift, (1u64 << shift) + 1]);
        for value in values.chain([u64::MAX]) {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            put_varint(value, &mut ours);
            prost::encoding::encode_varint(value, &mut theirs);
            assert_eq!(ours, theirs, "{value}");
        }
        for tag in [1, 15, 16, 2047, 2048, (1 << 29) - 1] {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            put_key(tag, WireType::LengthDelimited, &mut ours);
            prost::encoding::encode_key(tag, WireType::LengthDelimited, &mut theirs);
            assert_eq!(ours, theirs, "{tag}");
        }
    }

    /// The hand-written fields read back as prost's own encoding of the same message.
    #[test]
    fn fields_match_prost() {
        for value in [0u32, 1, 127, 128, u32::MAX] {
            let mut out = Vec::new();
            put_varint_field(1, u64::from(value), &mut out);
            assert_eq!(out, UInt32Value { value }.encode_to_vec(), "{value}");
            assert_eq!(out.len(), varint_field_len(1, u64::from(value)));
        }
        let text = "x".repeat(200);
        let mut out = Vec::new();
        put_string_field(3, text.as_bytes(), &mut out);
        assert_eq!(out.len(), string_field_len(3, text.as_bytes()));
        let mut expected = Vec::new();
        prost::encoding::string::encode(3, &text, &mut expected);
        assert_eq!(out, expected);
        let mut empty = Vec::new();
        put_string_field(3, b"", &mut empty);
        assert!(empty.is_empty() && string_field_len(3, b"") == 0);
    }
}

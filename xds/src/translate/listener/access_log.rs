//! File access logs from MeshConfig (`accessLogFile`, `accessLogFormat`,
//! `accessLogEncoding`): the same log every HTTP connection manager and every tcp_proxy
//! carries, in Istio's default text or JSON layout unless the mesh gives its own.
//!
//! The JSON layout is a `google.protobuf.Struct`, which prost holds in a `HashMap` and so
//! encodes in a different order on every build. To keep equal inputs byte-identical, the
//! `FileAccessLog` is encoded here by hand with the Struct's entries in key order; protobuf
//! parsers (Envoy's included) accept entries of a map in any order.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
use envoy_types::pb::envoy::config::core::v3::{DataSource, JsonFormatOptions, SubstitutionFormatString};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Any, Value};
use prost::encoding::{WireType, encode_key, encode_varint};
use prost::{Message, Name};
use rudder_config::mesh::{AccessLogEncoding, MeshConfig};

/// Extension name of Envoy's file access logger.
pub const FILE_ACCESS_LOG: &str = "envoy.access_loggers.file";

/// Istio's default text line (its `EnvoyTextLogFormat`, Istio 1.9 onwards): request line,
/// response code and flags, failure details, sizes, timing, the usual request headers and
/// the upstream/downstream addresses.
pub const ISTIO_TEXT_FORMAT: &str = concat!(
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" ",
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ",
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% ",
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% ",
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n",
);

/// Istio's default JSON keys (its `EnvoyJSONLogFormatIstio`) and the operator each one logs.
pub const ISTIO_JSON_FORMAT: &[(&str, &str)] = &[
    ("authority", "%REQ(:AUTHORITY)%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("duration", "%DURATION%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("route_name", "%ROUTE_NAME%"),
    ("start_time", "%START_TIME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("upstream_transport_failure_reason", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
];

/// The mesh's own file log (`accessLogFile`): one when the mesh names a file, none
/// otherwise. Telemetry objects decide where it applies ([`crate::translate::telemetry`]).
pub fn from_mesh(mesh: &MeshConfig) -> Vec<AccessLog> {
    let Some(path) = mesh.access_log_file.as_deref().filter(|p| !p.is_empty()) else {
        return Vec::new();
    };
    let format = mesh.access_log_format.as_deref().unwrap_or_default();
    vec![file_log(path, mesh.access_log_encoding.unwrap_or(AccessLogEncoding::Text), format)]
}

/// A file log in `encoding`; an empty `format` means Istio's default layout of that encoding.
pub fn file_log(path: &str, encoding: AccessLogEncoding, format: &str) -> AccessLog {
    let config = match encoding {
        AccessLogEncoding::Json => json_file_log(path, &json_fields(format)),
        AccessLogEncoding::Text => text_file_log(path, format),
    };
    AccessLog {
        name: FILE_ACCESS_LOG.to_owned(),
        config_type: Some(ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// A text file log; an empty `format` means Istio's default. Like Istio, a newline is added
/// when the format lacks one, so entries never run together.
fn text_file_log(path: &str, format: &str) -> Any {
    let mut line = if format.is_empty() { ISTIO_TEXT_FORMAT.to_owned() } else { format.to_owned() };
    if !line.ends_with('\n') {
        line.push('\n');
    }
    let log = FileAccessLog {
        path: path.to_owned(),
        access_log_format: Some(AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(Format::TextFormatSource(DataSource {
                specifier: Some(Specifier::InlineString(line)),
                ..Default::default()
            })),
            ..Default::default()
        })),
    };
    Any { type_url: FileAccessLog::type_url(), value: log.encode_to_vec() }
}

/// The JSON fields to log: the mesh's `accessLogFormat` when it is a non-empty JSON object,
/// else Istio's default keys. A format that does not parse falls back to the default, as
/// Istio does, and is logged.
fn json_fields(format: &str) -> serde_json::Map<String, serde_json::Value> {
    let default = || ISTIO_JSON_FORMAT.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect();
    if format.trim().is_empty() {
        return default();
    }
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(format) {
        Ok(map) if !map.is_empty() => map,
        Ok(_) => default(),
        Err(err) => {
            tracing::warn!(%err, "mesh accessLogFormat is not a JSON object; using Istio's default JSON log format");
            default()
        }
    }
}

/// A JSON file log, encoded with every Struct's entries in key order (see the module doc).
fn json_file_log(path: &str, fields: &serde_json::Map<String, serde_json::Value>) -> Any {
    // SubstitutionFormatString { json_format (2), json_format_options (7) }.
    let mut format = Vec::new();
    length_delimited(2, &encode_struct(fields), &mut format);
    let options =
        SubstitutionFormatString { json_format_options: Some(JsonFormatOptions::default()), ..Default::default() };
    options.encode(&mut format).unwrap_or_default();
    // FileAccessLog { path (1), log_format (5) }.
    let mut log = FileAccessLog { path: path.to_owned(), access_log_format: None }.encode_to_vec();
    length_delimited(5, &format, &mut log);
    Any { type_url: FileAccessLog::type_url(), value: log }
}

/// `google.protobuf.Struct` bytes with entries in key order: map entries are repeated
/// field 1 messages `{key (1), value (2)}`.
fn encode_struct(fields: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let sorted: BTreeMap<&String, &serde_json::Value> = fields.iter().collect();
    let mut out = Vec::new();
    for (key, value) in sorted {
        let mut entry = Vec::new();
        length_delimited(1, key.as_bytes(), &mut entry);
        length_delimited(2, &encode_value(value), &mut entry);
        length_delimited(1, &entry, &mut out);
    }
    out
}

/// `google.protobuf.Value` bytes; scalars through prost, objects and lists by hand so nested
/// objects stay ordered too.
fn encode_value(value: &serde_json::Value) -> Vec<u8> {
    let scalar = |kind| Value { kind: Some(kind) }.encode_to_vec();
    match value {
        serde_json::Value::Null => scalar(Kind::NullValue(0)),
        serde_json::Value::Bool(b) => scalar(Kind::BoolValue(*b)),
        serde_json::Value::Number(n) => scalar(Kind::NumberValue(n.as_f64().unwrap_or_default())),
        serde_json::Value::String(s) => scalar(Kind::StringValue(s.clone())),
        serde_json::Value::Object(map) => {
            let mut out = Vec::new();
            length_delimited(5, &encode_struct(map), &mut out);
            out
        }
        serde_json::Value::Array(items) => {
            // ListValue { values (1) repeated Value }.
            let mut list = Vec::new();
            for item in items {
                length_delimited(1, &encode_value(item), &mut list);
            }
            let mut out = Vec::new();
            length_delimited(6, &list, &mut out);
            out
        }
    }
}

fn length_delimited(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(log: &AccessLog) -> FileAccessLog {
        let Some(ConfigType::TypedConfig(any)) = &log.config_type else { panic!("no typed config") };
        assert_eq!(any.type_url, "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog");
        FileAccessLog::decode(any.value.as_slice()).unwrap()
    }

    fn mesh(file: Option<&str>, format: Option<&str>, encoding: Option<AccessLogEncoding>) -> MeshConfig {
        MeshConfig {
            access_log_file: file.map(str::to_owned),
            access_log_format: format.map(str::to_owned),
            access_log_encoding: encoding,
            ..Default::default()
        }
    }

    fn text_of(log: &FileAccessLog) -> String {
        let Some(AccessLogFormat::LogFormat(f)) = &log.access_log_format else { panic!("no log_format") };
        let Some(Format::TextFormatSource(DataSource { specifier: Some(Specifier::InlineString(s)), .. })) = &f.format
        else {
            panic!("not text")
        };
        s.clone()
    }

    fn json_of(log: &FileAccessLog) -> BTreeMap<String, String> {
        let Some(AccessLogFormat::LogFormat(f)) = &log.access_log_format else { panic!("no log_format") };
        let Some(Format::JsonFormat(s)) = &f.format else { panic!("not json") };
        assert!(f.json_format_options.is_some());
        s.fields.iter().map(|(k, v)| (k.clone(), format!("{:?}", v.kind))).collect()
    }

    #[test]
    fn no_file_no_log() {
        assert!(from_mesh(&mesh(None, None, None)).is_empty());
        assert!(from_mesh(&mesh(Some(""), None, None)).is_empty());
    }

    #[test]
    fn text_default_custom_and_newline() {
        let cases = [
            (None, ISTIO_TEXT_FORMAT.to_owned()),
            (Some("%START_TIME% %PROTOCOL%"), "%START_TIME% %PROTOCOL%\n".to_owned()),
            (Some("x\n"), "x\n".to_owned()),
        ];
        for (format, want) in cases {
            let logs = from_mesh(&mesh(Some("/dev/stdout"), format, Some(AccessLogEncoding::Text)));
            assert_eq!(logs.len(), 1);
            assert_eq!(logs[0].name, FILE_ACCESS_LOG);
            let file = decode(&logs[0]);
            assert_eq!(file.path, "/dev/stdout");
            assert_eq!(text_of(&file), want);
        }
        assert!(ISTIO_TEXT_FORMAT.contains("%UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS%"));
    }

    #[test]
    fn json_default_custom_and_fallback() {
        let default = json_of(&decode(&from_mesh(&mesh(Some("/tmp/a"), None, Some(AccessLogEncoding::Json)))[0]));
        assert_eq!(default.len(), ISTIO_JSON_FORMAT.len());
        assert!(default["path"].contains("X-ENVOY-ORIGINAL-PATH?:PATH"));
        let custom = json_of(&decode(
            &from_mesh(&mesh(
                Some("/tmp/a"),
                Some(r#"{"code":"%RESPONSE_CODE%","n":1}"#),
                Some(AccessLogEncoding::Json),
            ))[0],
        ));
        assert_eq!(custom.keys().collect::<Vec<_>>(), ["code", "n"]);
        let bad = json_of(&decode(&from_mesh(&mesh(Some("/tmp/a"), Some("[]"), Some(AccessLogEncoding::Json)))[0]));
        assert_eq!(bad.len(), ISTIO_JSON_FORMAT.len());
    }

    #[test]
    fn nested_json_layouts_survive_the_hand_encoding() {
        let format = r#"{"z":"%PROTOCOL%","a":{"y":"%DURATION%","b":["x",1,true,null]}}"#;
        let logs = from_mesh(&mesh(Some("/tmp/a"), Some(format), Some(AccessLogEncoding::Json)));
        let file = decode(&logs[0]);
        let Some(AccessLogFormat::LogFormat(f)) = &file.access_log_format else { panic!("no log_format") };
        let Some(Format::JsonFormat(s)) = &f.format else { panic!("not json") };
        let Some(Kind::StructValue(inner)) = &s.fields["a"].kind else { panic!("a is not an object") };
        assert_eq!(inner.fields["y"].kind, Some(Kind::StringValue("%DURATION%".into())));
        let Some(Kind::ListValue(list)) = &inner.fields["b"].kind else { panic!("b is not a list") };
        let kinds: Vec<_> = list.values.iter().map(|v| v.kind.clone()).collect();
        assert_eq!(
            kinds,
            [
                Some(Kind::StringValue("x".into())),
                Some(Kind::NumberValue(1.0)),
                Some(Kind::BoolValue(true)),
                Some(Kind::NullValue(0))
            ]
        );
        // Keys in order on the wire: "a" before "z" although written after it.
        let Some(ConfigType::TypedConfig(any)) = &logs[0].config_type else { panic!("no typed config") };
        let bytes = &any.value;
        let at = |needle: &[u8]| bytes.windows(needle.len()).position(|w| w == needle).unwrap();
        assert!(at(b"%DURATION%") < at(b"%PROTOCOL%"));
    }

    #[test]
    fn json_encoding_is_byte_stable() {
        let m = mesh(Some("/dev/stdout"), None, Some(AccessLogEncoding::Json));
        let first = from_mesh(&m);
        for _ in 0..20 {
            assert_eq!(from_mesh(&m), first);
        }
    }
}

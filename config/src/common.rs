//! Value types shared by the Istio APIs, shaped the way Istio reads them from YAML.
//!
//! Istio decodes its CRDs with protobuf JSON rules, so:
//! - `google.protobuf.Duration` accepts Go duration syntax (`10s`, `1m`, `1h`, `100ms`, `1.5s`,
//!   `1h30m`); we keep nanoseconds and write the largest unit that is exact (`90s` → `90s`,
//!   `60s` → `1m`).
//! - enums accept their name (case-sensitive) or their number; we write the name.
//! - `google.protobuf.{Bool,UInt32,Int32,Double}Value` wrappers are plain values in YAML; an unset
//!   wrapper is `None` (so "unset" and "zero" stay distinct).
//! - `google.protobuf.Struct` fields are free-form objects kept as JSON.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `google.protobuf.Duration` as Istio accepts it in YAML.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    nanos: i64,
}

const NANOS_PER: [(&str, i64); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

impl Duration {
    pub const fn from_nanos(nanos: i64) -> Self {
        Self { nanos }
    }
    pub const fn from_millis(ms: i64) -> Self {
        Self { nanos: ms * 1_000_000 }
    }
    pub const fn from_secs(s: i64) -> Self {
        Self { nanos: s * 1_000_000_000 }
    }
    pub const fn as_nanos(self) -> i64 {
        self.nanos
    }
    /// The duration as std's type; negative durations clamp to zero.
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_nanos(u64::try_from(self.nanos).unwrap_or(0))
    }

    /// Parses Go `time.ParseDuration` syntax, which is what Istio's YAML decoding accepts.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("invalid duration {text:?}: {why}"));
        let (negative, mut rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        if rest == "0" {
            return Ok(Self::default());
        }
        if rest.is_empty() {
            return bad("empty");
        }
        let mut total: i128 = 0;
        while !rest.is_empty() {
            let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            let number = &rest[..number_len];
            if number.is_empty() || number == "." || number.matches('.').count() > 1 {
                return bad("expected a number");
            }
            rest = &rest[number_len..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let Some(&(_, scale)) = NANOS_PER.iter().find(|(name, _)| *name == unit) else {
                return if unit.is_empty() {
                    bad("missing unit (one of ns, us, ms, s, m, h)")
                } else {
                    bad(&format!("unknown unit {unit:?} (one of ns, us, ms, s, m, h)"))
                };
            };
            let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
            let whole: i128 = if whole.is_empty() {
                0
            } else {
                match whole.parse() {
                    Ok(w) => w,
                    Err(_) => return bad("number out of range"),
                }
            };
            let mut part = whole * i128::from(scale);
            let mut divisor: i128 = 1;
            for digit in fraction.bytes().take(18) {
                divisor *= 10;
                part += i128::from(digit - b'0') * i128::from(scale) / divisor;
            }
            total += part;
            if total > i128::from(i64::MAX) {
                return bad("out of range");
            }
        }
        let nanos = i64::try_from(total).map_err(|_| format!("invalid duration {text:?}: out of range"))?;
        Ok(Self { nanos: if negative { -nanos } else { nanos } })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0s");
        }
        let magnitude = self.nanos.unsigned_abs();
        let sign = if self.nanos < 0 { "-" } else { "" };
        for (unit, scale) in
            [("h", 3_600_000_000_000u64), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)]
        {
            if magnitude.is_multiple_of(scale) {
                return write!(f, "{sign}{}{unit}", magnitude / scale);
            }
        }
        write!(f, "{sign}{magnitude}ns")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "description": "Duration, e.g. 10s, 1m, 100ms." })
    }
}

/// Declares a protobuf enum as Istio reads it: by name (case-sensitive) or by number, written
/// back by name, with a `{type: string, enum: [...]}` schema. The first variant is the default
/// (the proto zero value).
#[macro_export]
macro_rules! proto_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $number:literal => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value with its YAML name and proto number, in declaration order.
            pub const ALL: &'static [($name, &'static str, i32)] = &[$(($name::$variant, $text, $number)),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            pub fn number(self) -> i32 {
                match self { $($name::$variant => $number),+ }
            }
        }
        impl Default for $name {
            fn default() -> Self { Self::ALL[0].0 }
        }
        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result { f.write_str(self.as_str()) }
        }
        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(self.as_str()) }
        }
        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::common::decode_enum(d, Self::ALL, stringify!($name))
            }
        }
        impl ::schemars::JsonSchema for $name {
            fn schema_name() -> ::std::borrow::Cow<'static, str> { stringify!($name).into() }
            fn inline_schema() -> bool { true }
            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                let names: Vec<&str> = Self::ALL.iter().map(|(_, text, _)| *text).collect();
                ::schemars::json_schema!({ "type": "string", "enum": names })
            }
        }
    };
}

/// Shared decoding for [`proto_enum!`] types.
pub fn decode_enum<'de, D, T>(d: D, all: &[(T, &'static str, i32)], type_name: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Copy,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NameOrNumber<'a> {
        Number(i64),
        Name(Cow<'a, str>),
    }
    let names = || all.iter().map(|(_, n, _)| *n).collect::<Vec<_>>().join(", ");
    match NameOrNumber::deserialize(d)? {
        NameOrNumber::Name(name) => all.iter().find(|(_, n, _)| *n == name).map(|(v, _, _)| *v).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown {type_name} value {name:?}; expected one of {}", names()))
        }),
        NameOrNumber::Number(number) => {
            all.iter().find(|(_, _, n)| i64::from(*n) == number).map(|(v, _, _)| *v).ok_or_else(|| {
                serde::de::Error::custom(format!("unknown {type_name} number {number}; expected one of {}", names()))
            })
        }
    }
}

/// A `google.protobuf.Struct` (or free-form Helm values): any JSON object, kept as is. Its schema
/// tells the API server to keep unknown fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FreeForm(pub serde_json::Map<String, serde_json::Value>);

impl JsonSchema for FreeForm {
    fn schema_name() -> Cow<'static, str> {
        "FreeForm".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
    }
}

/// Any JSON value (`google.protobuf.Value`), e.g. an IstioOperator `tag` that may be a number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AnyValue(pub serde_json::Value);

impl JsonSchema for AnyValue {
    fn schema_name() -> Cow<'static, str> {
        "AnyValue".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
    }
}

/// Status of Istio config objects (`istio.meta.v1alpha1.IstioStatus`), written by the control
/// plane; kept free-form like upstream.
pub type IstioStatus = FreeForm;

/// `istio.type.v1beta1.WorkloadSelector`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// `istio.type.v1beta1.PortSelector`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
}

/// `istio.type.v1beta1.PolicyTargetReference` (`targetRef` / `targetRefs`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// `StringMatch`: exactly one of `exact`, `prefix`, `regex`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// RE2 syntax.
    Regex(String),
}

/// Deserialises an optional protobuf integer that YAML may give as a number or a numeric
/// string (protobuf JSON accepts both). Use with `#[serde(default, deserialize_with = ...)]`.
pub fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText<'a> {
        Number(u32),
        Text(Cow<'a, str>),
    }
    match Option::<NumberOrText>::deserialize(d)? {
        None => Ok(None),
        Some(NumberOrText::Number(n)) => Ok(Some(n)),
        Some(NumberOrText::Text(t)) => t.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("invalid port or count {t:?}: expected a whole number 0-4294967295"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go_and_print_canonically() {
        let cases = [
            ("10s", 10_000_000_000, "10s"),
            ("1m", 60_000_000_000, "1m"),
            ("1h", 3_600_000_000_000, "1h"),
            ("100ms", 100_000_000, "100ms"),
            ("1.5s", 1_500_000_000, "1500ms"),
            ("1h30m", 5_400_000_000_000, "90m"),
            ("0", 0, "0s"),
            ("0.001s", 1_000_000, "1ms"),
            ("300us", 300_000, "300us"),
            ("-2s", -2_000_000_000, "-2s"),
            ("90s", 90_000_000_000, "90s"),
        ];
        for (text, nanos, canonical) in cases {
            let d = Duration::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(d.as_nanos(), nanos, "{text}");
            assert_eq!(d.to_string(), canonical, "{text}");
            assert_eq!(Duration::parse(canonical), Ok(d), "{canonical} reparses");
        }
    }

    #[test]
    fn bad_durations_say_why() {
        for (text, why) in [
            ("10", "missing unit"),
            ("10x", "unknown unit \"x\""),
            ("", "empty"),
            ("s", "expected a number"),
            ("1..2s", "expected a number"),
        ] {
            let err = Duration::parse(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    crate::proto_enum! {
        pub enum Colour { Unset = 0 => "UNSET", Red = 1 => "RED" }
    }

    #[test]
    fn enums_accept_names_and_numbers() {
        assert_eq!(serde_json::from_str::<Colour>("\"RED\"").ok(), Some(Colour::Red));
        assert_eq!(serde_json::from_str::<Colour>("1").ok(), Some(Colour::Red));
        let err = serde_json::from_str::<Colour>("\"red\"").expect_err("case-sensitive");
        assert!(err.to_string().contains("expected one of UNSET, RED"), "{err}");
        assert_eq!(serde_json::to_string(&Colour::Red).ok().as_deref(), Some("\"RED\""));
        assert_eq!(Colour::default(), Colour::Unset);
        assert_eq!(Colour::Red.number(), 1);
    }
}

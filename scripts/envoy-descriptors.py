#!/usr/bin/env python3
"""Writes the Envoy protobuf descriptors discovery needs to read EnvoyFilter patches.

envoy-types (the crate whose Rust types discovery builds Envoy config with) ships every .proto
it was generated from as one FileDescriptorSet (src/generated/types.bin) but does not export
it. This script finds that crate through `cargo metadata` (the version Cargo.lock pins, in
Cargo's own source cache), keeps each file descriptor without its source_code_info (comments
and spans: ~80 % of the bytes, unused at run time), adds the two TypedStruct messages
EnvoyFilters use and envoy-types leaves out, and writes the result to
config/src/envoy_descriptors.bin, which is checked in (rudder_config::envoy_proto reads it:
validation decodes EnvoyFilter patch values with it, discovery applies them).

    scripts/envoy-descriptors.py           # regenerate
    scripts/envoy-descriptors.py --check   # CI: fail when the checked-in file is stale

Run it after bumping envoy-types. Needs only Python 3 and cargo.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "config", "src", "envoy_descriptors.bin")
# FileDescriptorSet.file = 1; FileDescriptorProto.source_code_info = 9.
SET_FILE, SOURCE_CODE_INFO = 1, 9


def varint(data, i):
    value, shift = 0, 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def encode_varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def records(data):
    """(field number, wire type, raw record bytes, payload) for each top-level field."""
    i = 0
    while i < len(data):
        start = i
        key, i = varint(data, i)
        wire = key & 7
        if wire == 0:
            _, i = varint(data, i)
            payload = None
        elif wire == 1:
            i += 8
            payload = None
        elif wire == 2:
            length, i = varint(data, i)
            payload = data[i : i + length]
            i += length
        elif wire == 5:
            i += 4
            payload = None
        else:
            raise ValueError(f"unsupported wire type {wire} at byte {start}")
        yield key >> 3, wire, data[start:i], payload


def envoy_types_descriptor_set():
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if meta.returncode != 0:
        sys.exit(f"cargo metadata failed:\n{meta.stderr}")
    packages = [p for p in json.loads(meta.stdout)["packages"] if p["name"] == "envoy-types"]
    if len(packages) != 1:
        sys.exit(f"expected one envoy-types in the dependency graph, found {len(packages)}")
    crate_dir = os.path.dirname(packages[0]["manifest_path"])
    path = os.path.join(crate_dir, "src", "generated", "types.bin")
    with open(path, "rb") as f:
        return packages[0]["version"], f.read()


def stripped(descriptor_set):
    out = bytearray()
    for field, wire, _, file_proto in records(descriptor_set):
        if field != SET_FILE or wire != 2:
            raise ValueError("not a FileDescriptorSet")
        kept = b"".join(raw for f, _, raw, _ in records(file_proto) if f != SOURCE_CODE_INFO)
        out += encode_varint((SET_FILE << 3) | 2) + encode_varint(len(kept)) + kept
    return bytes(out)


def ld(field, payload):
    """A length-delimited field."""
    if isinstance(payload, str):
        payload = payload.encode()
    return encode_varint((field << 3) | 2) + encode_varint(len(payload)) + payload


def vint(field, value):
    return encode_varint(field << 3) + encode_varint(value)


def typed_struct_file(path, package):
    """`<package>.TypedStruct { string type_url = 1; google.protobuf.Struct value = 2; }`.

    envoy-types leaves out the udpa/xds type protos, but EnvoyFilters written for Istio wrap
    extension configs in TypedStruct (Envoy accepts both packages in any typed_config), so
    their one message is described here, as upstream's typed_struct.proto declares it.
    """
    # FieldDescriptorProto: name 1, number 3, label 4 (1 optional), type 5 (9 string, 11
    # message), type_name 6, json_name 10.
    type_url = ld(1, "type_url") + vint(3, 1) + vint(4, 1) + vint(5, 9) + ld(10, "typeUrl")
    value = ld(1, "value") + vint(3, 2) + vint(4, 1) + vint(5, 11) + ld(6, ".google.protobuf.Struct") + ld(10, "value")
    message = ld(1, "TypedStruct") + ld(2, type_url) + ld(2, value)
    # FileDescriptorProto: name 1, package 2, dependency 3, message_type 4, syntax 12.
    return ld(1, path) + ld(2, package) + ld(3, "google/protobuf/struct.proto") + ld(4, message) + ld(12, "proto3")


EXTRA_FILES = [
    typed_struct_file("udpa/type/v1/typed_struct.proto", "udpa.type.v1"),
    typed_struct_file("xds/type/v3/typed_struct.proto", "xds.type.v3"),
]


def main():
    check = sys.argv[1:] == ["--check"]
    if sys.argv[1:] not in ([], ["--check"]):
        sys.exit(__doc__)
    version, descriptor_set = envoy_types_descriptor_set()
    want = stripped(descriptor_set) + b"".join(ld(SET_FILE, f) for f in EXTRA_FILES)
    rel = os.path.relpath(OUT, ROOT)
    if check:
        try:
            with open(OUT, "rb") as f:
                have = f.read()
        except FileNotFoundError:
            have = b""
        if have != want:
            sys.exit(f"{rel} is stale for envoy-types {version}: run scripts/envoy-descriptors.py")
        print(f"{rel} is current (envoy-types {version})")
        return
    with open(OUT, "wb") as f:
        f.write(want)
    print(f"wrote {rel}: {len(want)} bytes from envoy-types {version}")


if __name__ == "__main__":
    main()

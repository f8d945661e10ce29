#!/usr/bin/env python3
"""Writes the generated seed inputs of every fuzz target into fuzz/generated/<target>/ (not in
git), from the examples and the test fixtures, in the input format each target reads (see
fuzz/README.md). Hand-written seeds live in fuzz/seeds/<target>/ (in git). Run from anywhere:
python3 fuzz/make_seeds.py"""
import glob
import json
import os
import re
import shutil

import yaml

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
OUT = os.path.join(FUZZ, "generated")


def root(pattern):
    return sorted(glob.glob(os.path.join(ROOT, pattern)))


def writer(target):
    directory = os.path.join(OUT, target)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    count = [0]

    def write(name, data):
        count[0] += 1
        with open(os.path.join(directory, f"{count[0]:03}-{name}"), "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())

    return write, count


def read(path):
    with open(path) as f:
        return f.read()


counts = {}

# yaml_validate: any text; the examples and the invalid fixtures as they are.
write, counts["yaml_validate"] = writer("yaml_validate")
for path in root("examples/*/*.yaml") + root("config/tests/invalid/*.yaml"):
    write(os.path.basename(path), read(path))

# mesh_config: mesh config texts (the examples' and the injector fixtures').
write, counts["mesh_config"] = writer("mesh_config")
for path in root("webhook/tests/golden/*.mesh.yaml"):
    write(os.path.basename(path), read(path))
for path in root("examples/local/mesh.yaml"):
    for doc in yaml.safe_load_all(read(path)):
        if isinstance(doc, dict) and isinstance((doc.get("data") or {}).get("mesh"), str):
            write("local-mesh", doc["data"]["mesh"])


# admission: first byte = endpoint, rest = AdmissionReview JSON.
def review(obj, kind, group, version, resource, operation="CREATE"):
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "namespace": (obj.get("metadata") or {}).get("namespace", "default"),
            "operation": operation,
            "object": obj,
        },
    }


write, counts["admission"] = writer("admission")
for path in root("webhook/tests/golden/*.yaml"):
    for doc in yaml.safe_load_all(read(path)):
        if isinstance(doc, dict) and doc.get("kind") == "Pod":
            write("inject", bytes([0]) + json.dumps(review(doc, "Pod", "", "v1", "pods")).encode())
for path in root("examples/*/*.yaml"):
    for doc in yaml.safe_load_all(read(path)):
        if isinstance(doc, dict) and "istio.io" in str(doc.get("apiVersion", "")):
            group, version = doc["apiVersion"].split("/")
            body = review(doc, doc["kind"], group, version, doc["kind"].lower() + "s")
            write("validate", bytes([2]) + json.dumps(body).encode())

# render: IstioOperator file, then NUL-separated --set flags (taken from the operator's tests).
write, counts["render"] = writer("render")
flags = set()
for path in root("operator/tests/*.rs") + root("operator/src/render/*.rs"):
    for flag in re.findall(r'"((?:values|components|meshConfig|profile|revision|hub|tag|namespace)[^"= ]*=[^"{}]*)"',
                           read(path)):
        flags.add(flag)
flags = sorted(flags)
operators = root("examples/operator/*.yaml")
for path in operators:
    write(os.path.basename(path), read(path))
for i, flag in enumerate(flags):
    write("set", read(operators[i % len(operators)]) + "\0" + flag)
write("sets", "\0".join(["spec: {}"] + flags + ["-r canary"]))

# injector: flags byte, then config, values, mesh and pod separated by NUL.
write, counts["injector"] = writer("injector")
for pod in root("webhook/tests/golden/*.yaml"):
    base = pod[: -len(".yaml")]
    if any(base.endswith(s) for s in (".config", ".values", ".mesh")):
        continue

    def sibling(suffix):
        path = f"{base}.{suffix}.yaml"
        return read(path) if os.path.exists(path) else ""

    parts = [sibling("config"), sibling("values"), sibling("mesh"), read(pod)]
    write(os.path.basename(pod), bytes([0]) + "\0".join(parts).encode())

# ads: hand-written scripts only (fuzz/seeds/ads).
print(", ".join(f"{target}: {count[0]}" for target, count in counts.items()), "seeds in", OUT)

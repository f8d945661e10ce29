#!/usr/bin/env python3
"""Writes seed inputs for the `admission` target into fuzz/corpus/admission/: the injector's
golden pods (tests/golden/*.yaml) as /inject AdmissionReviews and the examples' Istio objects
as /validate ones. The first byte of each seed selects the endpoint, as the target reads it.
Run from webhook/: python3 fuzz/make_seeds.py"""
import glob
import json
import os

import yaml

OUT = "fuzz/corpus/admission"
os.makedirs(OUT, exist_ok=True)


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


def write(name, selector, body):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(bytes([selector]) + json.dumps(body).encode())


n = 0
for path in sorted(glob.glob("tests/golden/*.yaml")):
    for doc in yaml.safe_load_all(open(path)):
        if isinstance(doc, dict) and doc.get("kind") == "Pod":
            n += 1
            write(f"inject-{n}", 0, review(doc, "Pod", "", "v1", "pods"))
for path in sorted(glob.glob("../examples/*/*.yaml")):
    for doc in yaml.safe_load_all(open(path)):
        if isinstance(doc, dict) and "istio.io" in str(doc.get("apiVersion", "")):
            group, version = doc["apiVersion"].split("/")
            n += 1
            write(f"validate-{n}", 2, review(doc, doc["kind"], group, version, doc["kind"].lower() + "s"))
print(f"{n} seeds in {OUT}")

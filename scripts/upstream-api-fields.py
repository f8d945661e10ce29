#!/usr/bin/env python3
"""Writes api/upstream-fields.txt: every field path of the `spec` of each Istio kind, as upstream
Istio's CRDs define it, from a pinned npm package.

Source: the npm package @kubernetes-models/istio (MIT), whose TypeScript declarations
(`<group>/<version>/<Kind>.d.ts`) are generated from upstream Istio's CRD schemas. The tarball is
fetched with `npm pack` (or given with --tarball) and must have the pinned sha256. Only names and
structure are read from it: no descriptions.

Path syntax, one field per line, `KIND spec.a.b`:
  - an array field ends in `[]` and its elements' fields follow it: `spec.http[].route[].weight`;
  - a map field (string keys) ends in `{}`: `spec.selector.matchLabels{}`;
  - a free-form object (`x-kubernetes-preserve-unknown-fields`, e.g. EnvoyFilter patch.value)
    is one line and nothing under it.
Fields of every branch of a oneOf are listed (upstream writes oneOfs as intersections/unions).

Usage:
  python3 scripts/upstream-api-fields.py                 # npm pack into a temp dir, write the file
  python3 scripts/upstream-api-fields.py --tarball T.tgz # use a tarball already downloaded
  python3 scripts/upstream-api-fields.py --check         # compare with the file, exit 1 if stale
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "@kubernetes-models/istio"
VERSION = "3.0.1"
SHA256 = "a319f9e8a3496cc1d598ca6d451f73ba049756be1d6663479a07eb88d0d22353"

# (group, kind, version read): the newest version upstream serves, which is the one Rudder
# writes its objects as (all of a kind's served versions share one schema in Rudder's CRDs).
KINDS = [
    ("networking.istio.io", "DestinationRule", "v1"),
    ("networking.istio.io", "EnvoyFilter", "v1alpha3"),
    ("networking.istio.io", "Gateway", "v1"),
    ("networking.istio.io", "ProxyConfig", "v1beta1"),
    ("networking.istio.io", "ServiceEntry", "v1"),
    ("networking.istio.io", "Sidecar", "v1"),
    ("networking.istio.io", "VirtualService", "v1"),
    ("networking.istio.io", "WorkloadEntry", "v1"),
    ("networking.istio.io", "WorkloadGroup", "v1"),
    ("security.istio.io", "AuthorizationPolicy", "v1"),
    ("security.istio.io", "PeerAuthentication", "v1"),
    ("security.istio.io", "RequestAuthentication", "v1"),
    ("telemetry.istio.io", "Telemetry", "v1"),
    ("extensions.istio.io", "WasmPlugin", "v1alpha1"),
]

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "api", "upstream-fields.txt")


# --- a small reader for the TypeScript type expressions of the declarations -----------------

TOKEN = re.compile(
    r'\s+|/\*.*?\*/|//[^\n]*|(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?)'
    r"|(?P<ident>[A-Za-z_$][A-Za-z0-9_$]*)|(?P<punct>[{}()<>\[\]:;?|&,=])",
    re.S,
)


def tokenize(text):
    """The tokens of `text` up to the brace that closes its first `{`."""
    tokens = []
    pos = depth = 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = m.end()
        if m.lastgroup is None:
            continue
        for kind in ("str", "num", "ident", "punct"):
            if m.group(kind) is not None:
                value = m.group(kind)
                if kind == "str":
                    value = json.loads(value)
                tokens.append((kind, value))
                break
        if tokens and tokens[-1] == ("punct", "{"):
            depth += 1
        elif tokens and tokens[-1] == ("punct", "}"):
            depth -= 1
            if depth == 0:
                break
    return tokens


class Obj:
    """An object type: named properties and, for maps, the type of the values."""

    def __init__(self, props, index):
        self.props = props  # name -> type
        self.index = index  # value type of `[key: string]: T`, or None


class Arr:
    def __init__(self, item):
        self.item = item


class Many:
    """A union, an intersection, a parenthesised type or Exclude<A, B> (only A counts)."""

    def __init__(self, parts):
        self.parts = parts


class Prim:
    def __init__(self, name):
        self.name = name


class Parser:
    def __init__(self, tokens):
        self.toks = tokens
        self.i = 0

    def peek(self, offset=0):
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else (None, None)

    def take(self, value=None):
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise ValueError(f"expected {value!r}, found {tok[1]!r} (token {self.i})")
        self.i += 1
        return tok

    def type_(self):
        if self.peek()[1] in ("|", "&"):
            self.take()
        parts = [self.intersection()]
        while self.peek()[1] == "|":
            self.take()
            parts.append(self.intersection())
        return parts[0] if len(parts) == 1 else Many(parts)

    def intersection(self):
        parts = [self.postfix()]
        while self.peek()[1] == "&":
            self.take()
            parts.append(self.postfix())
        return parts[0] if len(parts) == 1 else Many(parts)

    def postfix(self):
        t = self.primary()
        while self.peek()[1] == "[" and self.peek(1)[1] == "]":
            self.take()
            self.take()
            t = Arr(t)
        return t

    def primary(self):
        kind, value = self.peek()
        if value == "{":
            return self.object()
        if value == "(":
            self.take()
            t = self.type_()
            self.take(")")
            return t
        if kind in ("str", "num"):
            self.take()
            return Prim("literal")
        if kind == "ident":
            self.take()
            if self.peek()[1] == "<":
                self.take()
                args = [self.type_()]
                while self.peek()[1] == ",":
                    self.take()
                    args.append(self.type_())
                self.take(">")
                if value == "Array":
                    return Arr(args[0])
                if value == "Exclude":
                    return Many([args[0]])
                raise ValueError(f"unknown generic type {value}")
            return Prim(value)
        raise ValueError(f"unexpected token {value!r} (token {self.i})")

    def object(self):
        self.take("{")
        props, index = {}, None
        while self.peek()[1] != "}":
            kind, value = self.peek()
            if value == "[":
                # [key: string]: T
                self.take("[")
                self.take()
                self.take(":")
                self.take()
                self.take("]")
                self.take(":")
                index = self.type_()
            elif kind in ("str", "ident"):
                self.take()
                if self.peek()[1] == "?":
                    self.take()
                self.take(":")
                t = self.type_()
                props[value] = Many([props[value], t]) if value in props else t
            else:
                raise ValueError(f"unexpected token {value!r} in an object (token {self.i})")
            if self.peek()[1] in (";", ","):
                self.take()
        self.take("}")
        return Obj(props, index)


def flatten(t):
    """Every object, array and primitive a type may be, through unions and intersections."""
    if isinstance(t, Many):
        out = []
        for p in t.parts:
            out.extend(flatten(p))
        return out
    return [t]


def paths(t, prefix, out):
    """Appends the field path of every property under type `t` (an object) to `out`."""
    props = {}
    for part in flatten(t):
        if isinstance(part, Obj):
            for name, pt in part.props.items():
                props.setdefault(name, []).append(pt)
    for name in sorted(props):
        walk(Many(props[name]), f"{prefix}.{name}", out)


def walk(t, path, out):
    parts = flatten(t)
    arrays = [p.item for p in parts if isinstance(p, Arr)]
    maps = [p.index for p in parts if isinstance(p, Obj) and p.index is not None and not p.props]
    objects = [p for p in parts if isinstance(p, Obj) and p.props]
    if arrays and not objects and not maps:
        walk(Many(arrays), path + "[]", out)
        return
    if maps and not objects and not arrays:
        walk(Many(maps), path + "{}", out)
        return
    out.append(path)
    if objects:
        paths(Many(objects), path, out)


def spec_fields(text, kind):
    """The field paths of `spec` in the declaration of `I<kind>`."""
    m = re.search(r"export interface I" + re.escape(kind) + r"\s*(\{)", text)
    if not m:
        raise ValueError(f"no interface I{kind}")
    parser = Parser(tokenize(text[m.start(1):]))
    root = parser.object()
    if "spec" not in root.props:
        raise ValueError(f"I{kind} has no spec")
    out = []
    paths(root.props["spec"], "spec", out)
    return out


# --- the package ------------------------------------------------------------------------------


def fetch(workdir):
    result = subprocess.run(
        ["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent", "--pack-destination", workdir],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"npm pack failed:\n{result.stderr}")
    names = [n for n in os.listdir(workdir) if n.endswith(".tgz")]
    if len(names) != 1:
        sys.exit(f"npm pack left {names} in {workdir}")
    return os.path.join(workdir, names[0])


def render(tarball):
    data = open(tarball, "rb").read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        sys.exit(f"{tarball}: sha256 {digest}, expected {SHA256} ({PACKAGE}@{VERSION})")
    with tarfile.open(tarball, "r:gz") as tar:
        files = {m.name: m for m in tar.getmembers() if m.isfile()}

        def read(name):
            return tar.extractfile(files[name]).read().decode("utf-8")

        meta = json.loads(read("package/package.json"))
        if meta.get("version") != VERSION:
            sys.exit(f"{tarball} holds version {meta.get('version')}, expected {VERSION}")
        inputs = meta.get("crd-generate", {}).get("input", [])
        istio = sorted({m.group(1) for m in (re.search(r"istio/istio/([0-9.]+)/.*crd-all", u) for u in inputs) if m})
        lines = [
            "# Upstream Istio API: the field paths of each kind's `spec`, one per line (`KIND PATH`).",
            f"# Source: npm {PACKAGE}@{VERSION} (MIT), generated from Istio {', '.join(istio) or '?'} CRDs.",
            f"# Tarball sha256: {SHA256}",
            "# Regenerate: python3 scripts/upstream-api-fields.py [--tarball FILE.tgz]; do not edit by hand.",
            "# Syntax: `[]` array elements, `{}` map values; a free-form object has no lines below it.",
            "# Versions read: " + ", ".join(f"{k} {g}/{v}" for g, k, v in KINDS),
        ]
        for group, kind, version in KINDS:
            fields = spec_fields(read(f"package/{group}/{version}/{kind}.d.ts"), kind)
            # The older versions upstream still serves must not differ from the one read.
            for other in sorted(n for n in files if re.fullmatch(rf"package/{re.escape(group)}/[^/]+/{kind}\.d\.ts", n)):
                if spec_fields(read(other), kind) != fields:
                    lines.append(f"# note: {other[len('package/'):]} differs from {version}")
            lines.extend(f"{kind} {f}" for f in fields)
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tarball", help="the package tarball (default: npm pack it into a temp dir)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output file (default: api/upstream-fields.txt)")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing")
    args = ap.parse_args()
    if args.tarball:
        text = render(args.tarball)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            text = render(fetch(tmp))
    out = os.path.normpath(args.out)
    if args.check:
        current = open(out).read() if os.path.exists(out) else ""
        if current != text:
            print(f"{out} is out of date; run scripts/upstream-api-fields.py", file=sys.stderr)
            return 1
        print(f"{out} is current")
        return 0
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print(f"wrote {out} ({text.count(chr(10)) - sum(1 for l in text.splitlines() if l.startswith('#'))} fields)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

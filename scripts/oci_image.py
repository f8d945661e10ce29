#!/usr/bin/env python3
"""Builds a single-layer container image as an archive, without a container engine.

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) that also carries
Docker's manifest.json, so `ctr image import`, `kind load image-archive`, `podman load` and
`docker load` all accept it and name the image from it. The layer is an uncompressed tar with
fixed owners and times, so the same inputs give the same image digest.

Contents are given as repeated options:
  --elf SRC:DEST       an executable and every shared library `ldd` lists for it
  --file SRC:DEST      a plain file (mode kept)
  --text DEST:CONTENT  a file with the given content (mode 0644)
  --symlink LINK:TARGET
  --dir DEST[:MODE]    an empty directory (default mode 0755)
  --tree SRC:DEST      a directory copied as is (its .so files get their libraries too)
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile


def ldd(path):
    """The libraries (and the loader) an ELF file needs, as absolute paths; [] if static."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True)
    if out.returncode != 0 or "not a dynamic executable" in out.stdout + out.stderr:
        return []
    libs = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libs.append(target)
            elif target == "not":
                sys.exit(f"oci_image: {path} needs {parts[0]}, which is not installed")
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


class Layer:
    def __init__(self):
        self.entries = {}  # dest path (no leading slash) -> TarInfo, bytes or None

    def _parents(self, dest):
        parts = dest.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.entries:
                self.add_dir(d, 0o755)

    def _info(self, dest, kind, mode):
        info = tarfile.TarInfo(dest)
        info.type, info.mode, info.mtime = kind, mode, 0
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def add_dir(self, dest, mode):
        dest = dest.strip("/")
        self._parents(dest)
        self.entries[dest] = (self._info(dest, tarfile.DIRTYPE, mode), None)

    def add_bytes(self, dest, data, mode):
        dest = dest.strip("/")
        self._parents(dest)
        info = self._info(dest, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.entries[dest] = (info, data)

    def add_file(self, src, dest):
        real = os.path.realpath(src)
        with open(real, "rb") as f:
            self.add_bytes(dest, f.read(), os.stat(real).st_mode & 0o7777)

    def add_elf(self, src, dest):
        self.add_file(src, dest)
        for lib in ldd(src):
            if lib.strip("/") not in self.entries:
                self.add_file(lib, lib)

    def add_symlink(self, link, target):
        link = link.strip("/")
        self._parents(link)
        info = self._info(link, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.entries[link] = (info, None)

    def add_tree(self, src, dest):
        for root, dirs, files in os.walk(src):
            rel = os.path.relpath(root, src)
            base = dest.rstrip("/") + ("" if rel == "." else "/" + rel)
            self.add_dir(base, 0o755)
            for name in sorted(files):
                path = os.path.join(root, name)
                if os.path.islink(path):
                    self.add_symlink(f"{base}/{name}", os.readlink(path))
                elif name.endswith(".so") or ".so." in name:
                    self.add_elf(path, f"{base}/{name}")
                else:
                    self.add_file(path, f"{base}/{name}")

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for dest in sorted(self.entries):
                info, data = self.entries[dest]
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def split(value, option):
    if ":" not in value:
        sys.exit(f"oci_image: {option} {value!r}: expected A:B")
    return value.split(":", 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="image reference, e.g. docker.io/library/x:1.0")
    p.add_argument("--out", required=True)
    p.add_argument("--entrypoint", default="[]", help="JSON list")
    p.add_argument("--cmd", default="[]", help="JSON list")
    p.add_argument("--user", default="")
    p.add_argument("--workdir", default="/")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--elf", action="append", default=[])
    p.add_argument("--file", action="append", default=[])
    p.add_argument("--text", action="append", default=[])
    p.add_argument("--symlink", action="append", default=[])
    p.add_argument("--dir", action="append", default=[])
    p.add_argument("--tree", action="append", default=[])
    a = p.parse_args()

    layer = Layer()
    for d in a.dir:
        dest, _, mode = d.partition(":")
        layer.add_dir(dest, int(mode or "755", 8))
    for e in a.elf:
        layer.add_elf(*split(e, "--elf"))
    for f in a.file:
        layer.add_file(*split(f, "--file"))
    for t in a.tree:
        layer.add_tree(*split(t, "--tree"))
    for t in a.text:
        dest, content = split(t, "--text")
        layer.add_bytes(dest, content.encode(), 0o644)
    for s in a.symlink:
        layer.add_symlink(*split(s, "--symlink"))

    layer_bytes = layer.tar()
    layer_digest = hashlib.sha256(layer_bytes).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": json.loads(a.entrypoint) or None,
            "Cmd": json.loads(a.cmd) or None,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"] + a.env,
            "User": a.user,
            "WorkingDir": a.workdir,
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "scripts/oci_image.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_digest = hashlib.sha256(config_bytes).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{config_digest}", "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{layer_digest}", "size": len(layer_bytes)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = hashlib.sha256(manifest_bytes).hexdigest()
    tag = a.name.rsplit(":", 1)[1] if ":" in a.name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": f"sha256:{manifest_digest}", "size": len(manifest_bytes),
                       "annotations": {"io.containerd.image.name": a.name,
                                       "org.opencontainers.image.ref.name": tag}}],
    }
    docker_manifest = [{"Config": f"blobs/sha256/{config_digest}", "RepoTags": [a.name],
                        "Layers": [f"blobs/sha256/{layer_digest}"]}]

    files = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index, sort_keys=True).encode()),
        ("manifest.json", json.dumps(docker_manifest).encode()),
        (f"blobs/sha256/{config_digest}", config_bytes),
        (f"blobs/sha256/{manifest_digest}", manifest_bytes),
        (f"blobs/sha256/{layer_digest}", layer_bytes),
    ]
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, a.out)
    print(f"{a.out}: {a.name} sha256:{manifest_digest} ({len(layer_bytes) // (1 << 20)} MiB)")


if __name__ == "__main__":
    main()

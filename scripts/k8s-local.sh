#!/usr/bin/env bash
# Prepares the local test cluster for the cluster tests: installs the Debian packages its node
# needs (containerd, runc, CNI plugins, iptables, iproute2, busybox-static) when missing, and
# unpacks the k8s-local bundle under .tools/. Prints the directory to set RUDDER_K8S_LOCAL to.
#
#   export RUDDER_K8S_LOCAL=$(scripts/k8s-local.sh [BUNDLE.tar.xz])
#
# The bundle defaults to ../shared/k8s-local/k8s-local.tar.xz (beside this checkout, as in CI).
# Needs root (the node runs containers). Everything it starts is stopped by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle="${1:-../shared/k8s-local/k8s-local.tar.xz}"
[ -f "$bundle" ] || { echo "k8s-local.sh: no bundle at $bundle" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "k8s-local.sh: the cluster's node needs root" >&2; exit 2; }

packages=()
command -v containerd >/dev/null || packages+=(containerd)
command -v runc >/dev/null || packages+=(runc)
[ -x /usr/lib/cni/bridge ] || packages+=(containernetworking-plugins)
command -v iptables >/dev/null || packages+=(iptables)
command -v ip >/dev/null || packages+=(iproute2)
[ -x /bin/busybox ] || packages+=(busybox-static)
command -v curl >/dev/null || packages+=(curl)
if [ ${#packages[@]} -gt 0 ]; then
  echo "k8s-local.sh: installing ${packages[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >&2
fi

dest="$PWD/.tools/k8s-local-bundle"
sum=$(sha256sum "$bundle" | cut -d' ' -f1)
if [ "$(cat "$dest/.sha256" 2>/dev/null)" != "$sum" ]; then
  if [ -f "$bundle.sha256" ]; then
    (cd "$(dirname "$bundle")" && sha256sum -c --quiet "$(basename "$bundle").sha256") >&2
  fi
  rm -rf "$dest"
  mkdir -p "$dest"
  tar xJf "$bundle" -C "$dest"
  echo "$sum" >"$dest/.sha256"
fi
echo "$dest/k8s-local"

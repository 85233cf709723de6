# shellcheck shell=bash
# Shared steps of scripts/jetson/install_jp*.sh (sourced, not run). Nothing here has been run on a
# Jetson: the steps are tested on an x86 machine with DRY_RUN=1 and with a stand-in torch
# (tests/test_jetson.py, benchmarks/jetson_install_check.sh).
#
# The rule every step follows: NVIDIA's torch and torchvision go in first, and nothing installed
# after them may replace them. So every package that declares a dependency on torch (this one,
# timm, torchvision) is installed with --no-deps, their other needs are installed from their own
# metadata with torch-family names left out, and the torch version is compared before and after.
#
# Environment: DRY_RUN=1 prints the commands instead of running them; VENV (default
# ~/iared-venv); PYTHON (default python3); MAX_JOBS (default 2: nvcc on an 8 GB Orin Nano);
# NUMPY_SPEC (default "numpy<2": JetPack's OpenCV and NVIDIA's JetPack 6 torch are NumPy 1.x builds);
# L4T_RELEASE / JETSON_SOC override what is read from /etc/nv_tegra_release and the device tree.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${VENV:-$HOME/iared-venv}
PYTHON=${PYTHON:-python3}
MAX_JOBS=${MAX_JOBS:-2}
NUMPY_SPEC=${NUMPY_SPEC:-numpy<2}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
DRY_RUN=${DRY_RUN:-}
export MAX_JOBS CUDA_HOME
# never to be replaced once NVIDIA's wheels are in
TORCH_FAMILY="torch torchvision torchaudio triton"

say() { printf 'iared-jetson: %s\n' "$*"; }
die() {
	printf 'iared-jetson: error: %s\n' "$*" >&2
	exit 1
}

# run CMD...: print it, and run it unless DRY_RUN=1
run() {
	printf '+ %s\n' "$*"
	if [ -z "$DRY_RUN" ]; then "$@"; fi
}

# "36.4" from "# R36 (release), REVISION: 4.3, ..." (L4T_RELEASE=36.4 overrides)
l4t_release() {
	if [ -n "${L4T_RELEASE:-}" ]; then
		echo "$L4T_RELEASE"
		return
	fi
	[ -r /etc/nv_tegra_release ] || die "no /etc/nv_tegra_release: this is not a Jetson (set L4T_RELEASE to override)"
	sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9]*\).*/\1.\2/p' /etc/nv_tegra_release | head -n 1
}

# tegra234 (Orin), tegra264 (Thor), tegra194 (Xavier) from the device tree (JETSON_SOC overrides)
jetson_soc() {
	if [ -n "${JETSON_SOC:-}" ]; then
		echo "$JETSON_SOC"
		return
	fi
	tr '\0' '\n' </proc/device-tree/compatible 2>/dev/null | sed -n 's/^nvidia,\(tegra[0-9]*\)$/\1/p' | head -n 1
}

# the CUDA architecture of the board's GPU, for TORCH_CUDA_ARCH_LIST
arch_for_soc() {
	case "$1" in
	tegra234) echo 8.7 ;;  # Orin
	tegra264) echo 11.0 ;; # Thor: sm_110 under CUDA 13 (CUDA 12.8/12.9 called it sm_101)
	tegra194) die "Xavier (sm_72) needs JetPack 5, which iared-edge does not support (docs/jetson.md)" ;;
	*) die "unknown Jetson SoC '$1' (set JETSON_SOC=tegra234 for Orin, tegra264 for Thor)" ;;
	esac
}

need_nvcc() {
	if [ -z "$DRY_RUN" ] && [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
		die "no nvcc in $CUDA_HOME: install JetPack's CUDA toolkit (sudo apt install nvidia-jetpack), or set CUDA_HOME"
	fi
}

# the venv sees the system's packages: JetPack's OpenCV (built with GStreamer, for CSI cameras)
# and TensorRT's Python bindings are apt packages, not pip ones
make_venv() {
	[ -x "$VENV/bin/python" ] || run "$PYTHON" -m venv --system-site-packages "$VENV"
	PY=$VENV/bin/python
	run "$PY" -m pip install --upgrade pip "setuptools>=64" wheel ninja packaging
}

torch_version() {
	if [ -n "$DRY_RUN" ]; then echo "(dry run)"; else "$PY" -c 'import torch; print(torch.__version__)'; fi
}

# the requirements DIST declares (markers evaluated here), less the torch family and NAMES...
requirements_of() {
	[ -n "$DRY_RUN" ] && return 0
	local dist=$1
	shift
	"$PY" - "$dist" "$TORCH_FAMILY $*" <<'EOF'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement

family = set(sys.argv[2].lower().split())
for line in requires(sys.argv[1]) or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name.lower() not in family and not req.name.lower().startswith("nvidia-"):
        print(str(req).split(";")[0].strip())
EOF
}

# install DIST's own needs (never the torch family, nor NAMES...); the torch version must not move
install_requirements_of() {
	local dist=$1 before reqs
	before=$(torch_version)
	reqs=$(requirements_of "$@")
	say "needs of $dist: $(printf "%s" "${reqs:-none}" | tr "\n" " ")"
	if [ -n "$reqs" ]; then
		# shellcheck disable=SC2086  # one word per requirement
		run "$PY" -m pip install -q $reqs "$NUMPY_SPEC"
	fi
	check_torch_unchanged "$before"
}

check_torch_unchanged() {
	local now
	now=$(torch_version)
	[ "$now" = "$1" ] || die "torch changed from $1 to $now: something replaced NVIDIA's wheel"
}

check_cuda_torch() {
	[ -n "$DRY_RUN" ] && return 0
	"$PY" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' ||
		die "torch $(torch_version) has no CUDA: that is not NVIDIA's Jetson wheel (see docs/jetson.md, 'Where the wheels come from')"
	"$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU:", torch.cuda.is_available())'
}

# timm, then this package and its extension, all --no-deps; then their own needs
install_iared() {
	local arch=$1
	run "$PY" -m pip install --no-deps "timm>=1.0"
	install_requirements_of timm
	say "building the extension for sm ${arch} with nvcc from $CUDA_HOME (MAX_JOBS=$MAX_JOBS)"
	(cd "$REPO" && run env TORCH_CUDA_ARCH_LIST="$arch" CUDA_HOME="$CUDA_HOME" MAX_JOBS="$MAX_JOBS" \
		"$PY" -m pip install --no-build-isolation --no-deps -e .)
	install_requirements_of iared-edge timm
	if [ -z "$DRY_RUN" ]; then "$VENV/bin/iared-edge" info; fi
}

# a CSI camera needs an OpenCV built with GStreamer: JetPack's, seen through --system-site-packages
check_opencv() {
	[ -n "$DRY_RUN" ] && return 0
	if ! "$PY" -c 'import cv2' 2>/dev/null; then
		say "no OpenCV: sudo apt install python3-opencv (JetPack's, with GStreamer) for cameras; video files need one too"
		return 0
	fi
	"$PY" - <<'EOF'
import cv2

line = [l for l in cv2.getBuildInformation().splitlines() if "GStreamer" in l]
gst = bool(line) and "YES" in line[0]
print(f"OpenCV {cv2.__version__} from {cv2.__file__}: GStreamer {'yes' if gst else 'NO'}")
if not gst:
    print("  CSI cameras (--csi) need GStreamer: pip uninstall opencv-python opencv-python-headless in this venv,")
    print("  so that JetPack's OpenCV (python3-opencv, seen through --system-site-packages) is the one imported")
EOF
}

# torchvision's release that goes with the installed torch: 0.(minor + 15) since torch 2.0
torchvision_spec() {
	if [ -n "$DRY_RUN" ]; then
		echo "torchvision==0.<torch minor + 15>.*"
		return
	fi
	"$PY" -c 'import torch; v = torch.__version__.split("+")[0].split("."); print(f"torchvision==0.{int(v[1]) + 15}.*")'
}

# NVIDIA's torch, then the torchvision that goes with it, both --no-deps, then their own needs
install_nvidia_torch() {
	local from=$1
	case "$from" in
	index)
		run "$PY" -m pip install --no-deps --index-url "$JETSON_INDEX" "$TORCH_SPEC"
		run "$PY" -m pip install --no-deps --index-url "$JETSON_INDEX" "$(torchvision_spec)"
		;;
	wheel)
		[ -n "${TORCH_WHEEL:-}" ] || die "TORCH_WHEEL is empty: the torch wheel (path or URL) of NVIDIA's page for your JetPack"
		[ -n "${TORCHVISION_WHEEL:-}" ] || die "TORCHVISION_WHEEL is empty: NVIDIA publishes no torchvision beside this torch;" \
			"build the torchvision release that goes with it (0.19 for torch 2.4, 0.20 for 2.5) from source against it," \
			"as NVIDIA's 'Installing PyTorch for Jetson Platform' says, then TORCHVISION_WHEEL=path/to/torchvision-....whl"
		run "$PY" -m pip install --no-deps "$TORCH_WHEEL"
		run "$PY" -m pip install --no-deps "$TORCHVISION_WHEEL"
		;;
	*) die "TORCH_FROM must be index or wheel, got '$from'" ;;
	esac
	install_requirements_of torch
	install_requirements_of torchvision
	check_cuda_torch
}

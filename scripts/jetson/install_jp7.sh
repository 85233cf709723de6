#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# iared-edge on JetPack 7 (Jetson Linux 38 / 39, Ubuntu 24.04, Python 3.12, CUDA 13): Jetson Thor
# (sm_110); Orin (sm_87) from JetPack 7.2 (Jetson Linux 39) on.
# UNRUN on a Jetson: tested on x86 with DRY_RUN=1 (tests/test_jetson.py). docs/jetson.md has the
# version table and where each fact comes from.
#
#   bash scripts/jetson/install_jp7.sh          # from a clone; then: source ~/iared-venv/bin/activate
#   DRY_RUN=1 bash scripts/jetson/install_jp7.sh   # print the steps only
#
# Before: sudo apt install nvidia-jetpack (nvcc, cuDNN, TensorRT), python3-venv, python3-opencv.
#
# NVIDIA's torch on Thor: the Jetson AI Lab pip index for SBSA / CUDA 13.0 (JETSON_INDEX; JetPack 7
# uses the SBSA CUDA), torch and the torchvision that goes with it, both --no-deps. On Orin with
# JetPack 7.2 no index was verified here: give JETSON_INDEX (or TORCH_FROM=wheel with TORCH_WHEEL
# and TORCHVISION_WHEEL) from NVIDIA's JetPack 7.2 notes. If `import torch` then fails on
# libnvpl_*.so or libcudss.so, the wheel needs NVIDIA's NVPL and cuDSS libraries (docs/jetson.md).
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TORCH_SPEC=${TORCH_SPEC:-torch}
NUMPY_SPEC=${NUMPY_SPEC:-numpy<2}

rel=$(l4t_release)
case "${rel%%.*}" in
38 | 39) ;;
*) die "this is Jetson Linux $rel, not 38/39 (JetPack 7): see docs/jetson.md for install_jp6.sh" ;;
esac
soc=$(jetson_soc)
arch=$(arch_for_soc "$soc")
if [ "$soc" = tegra234 ] && [ "${rel%%.*}" = 38 ]; then
	die "Orin needs JetPack 6, or JetPack 7.2 (Jetson Linux 39) and later; JetPack 7.0/7.1 are for Thor"
fi
if [ "$soc" = tegra264 ]; then
	JETSON_INDEX=${JETSON_INDEX:-https://pypi.jetson-ai-lab.io/sbsa/cu130}
fi
[ -n "${JETSON_INDEX:-}" ] || [ "${TORCH_FROM:-index}" = wheel ] ||
	die "Orin on JetPack 7.2: set JETSON_INDEX to the pip index NVIDIA names for it (none verified here)"
TORCH_FROM=${TORCH_FROM:-index}
say "JetPack 7 (Jetson Linux $rel), $soc: torch from '$TORCH_FROM', extension for sm $arch"

need_nvcc
make_venv
install_nvidia_torch "$TORCH_FROM"
install_iared "$arch"
check_opencv
say "done: source $VENV/bin/activate; benchmarks: docs/jetson.md, 'Power modes'"

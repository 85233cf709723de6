#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# iared-edge on JetPack 6 (Jetson Linux 36, Ubuntu 22.04, Python 3.10), Jetson Orin (sm_87).
# UNRUN on a Jetson: tested on x86 with DRY_RUN=1 (tests/test_jetson.py). docs/jetson.md has the
# version table and where each fact comes from.
#
#   bash scripts/jetson/install_jp6.sh          # from a clone; then: source ~/iared-venv/bin/activate
#   DRY_RUN=1 bash scripts/jetson/install_jp6.sh   # print the steps only
#
# Before: sudo apt install nvidia-jetpack (nvcc, cuDNN, TensorRT), python3-venv, python3-opencv
# (with GStreamer, for CSI cameras) and libopenblas-dev (NVIDIA's torch links it).
#
# NVIDIA's torch (TORCH_FROM):
#   index  JetPack 6.1 / 6.2 (L4T 36.4, CUDA 12.6), the default there: torch (TORCH_SPEC) and the
#          torchvision that goes with it from the Jetson AI Lab pip index for JetPack 6 / CUDA 12.6
#          (JETSON_INDEX; NVIDIA's forum points there for JetPack 6.1; .dev moved to .io).
#   wheel  JetPack 6.0 (L4T 36.3, CUDA 12.2), the default there: TORCH_WHEEL, the wheel NVIDIA's
#          "Installing PyTorch for Jetson Platform" lists for the JetPack, and TORCHVISION_WHEEL, a
#          torchvision you built from source against it (NVIDIA publishes none beside it).
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

JETSON_INDEX=${JETSON_INDEX:-https://pypi.jetson-ai-lab.io/jp6/cu126}
TORCH_SPEC=${TORCH_SPEC:-torch}

rel=$(l4t_release)
[ "${rel%%.*}" = 36 ] || die "this is Jetson Linux $rel, not 36 (JetPack 6): see docs/jetson.md for install_jp7.sh / JetPack 5"
soc=$(jetson_soc)
[ "$soc" = tegra234 ] || die "JetPack 6 runs on Orin (tegra234); this SoC is '$soc'"
arch=$(arch_for_soc "$soc")
if [ "${rel#*.}" -ge 4 ]; then
	jetpack="6.1/6.2"
	TORCH_FROM=${TORCH_FROM:-index}
	# NVIDIA's JetPack 6.1 wheel, for TORCH_FROM=wheel (its version: 2.5.0a0+872d972e41.nv24.08.17622132)
	TORCH_WHEEL=${TORCH_WHEEL:-https://developer.download.nvidia.com/compute/redist/jp/v61/pytorch/torch-2.5.0a0+872d972e41.nv24.08.17622132-cp310-cp310-linux_aarch64.whl}
else
	jetpack="6.0"
	TORCH_FROM=${TORCH_FROM:-wheel}
	# NVIDIA's JetPack 6.0 wheel (its version: 2.4.0a0+3bcc3cddb5.nv24.07.16234504)
	TORCH_WHEEL=${TORCH_WHEEL:-https://developer.download.nvidia.com/compute/redist/jp/v60/pytorch/torch-2.4.0a0+3bcc3cddb5.nv24.07.16234504-cp310-cp310-linux_aarch64.whl}
fi
say "JetPack $jetpack (Jetson Linux $rel), $soc: torch from '$TORCH_FROM', extension for sm $arch"

need_nvcc
make_venv
install_nvidia_torch "$TORCH_FROM"
install_iared "$arch"
check_opencv
say "done: source $VENV/bin/activate; benchmarks: docs/jetson.md, 'Power modes'"

#!/usr/bin/env bash
# JetPack 5 (Jetson Linux 35, Ubuntu 20.04, Python 3.8, CUDA 11.4; Xavier and Orin) is not
# supported, and this script only says so: NVIDIA's torch for JetPack 5 is 2.0 / 2.1 on Python 3.8,
# and iared-edge needs torch >= 2.4 (torch.library.register_fake) and Python >= 3.9.
cat >&2 <<'MSG'
iared-jetson: JetPack 5 is not supported. NVIDIA's torch wheels for it are 2.0 and 2.1 on Python 3.8;
iared-edge needs torch >= 2.4 and Python >= 3.9 (pyproject.toml), and porting it back is not planned.
  Orin: flash JetPack 6.1 or later and run scripts/jetson/install_jp6.sh.
  Xavier: no JetPack past 5 exists for it, so no supported path. What still works there: export the
  ONNX graphs on another machine (iared-edge export --keep-levels ...) and run them with ONNX Runtime
  or TensorRT 8.5's trtexec (docs/jetson.md, "TensorRT on JetPack").
MSG
exit 1

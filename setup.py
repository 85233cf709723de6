"""Build iared-edge and its extension iared_edge._C.

A CUDA extension when torch has CUDA and nvcc is found (CUDA_HOME), else a CPU-only C++ one;
IARED_NO_EXTENSION=1 installs the pure-Python package (reference ops). CUDA targets default to
Jetson Xavier 7.2, Orin 8.7 and Thor 11.0 plus desktop 8.0/8.6/8.9/9.0, keeping those this nvcc
can build, with PTX for 9.0 so that GPUs newer than the list (sm_100, sm_120) JIT the kernels
instead of failing with "no kernel image"; TORCH_CUDA_ARCH_LIST overrides. What was built is
printed and recorded in iared_edge/_build_info.py.
"""

import os
import subprocess

from setuptools import setup

DEFAULT_ARCHS = ["7.2", "8.0", "8.6", "8.7", "8.9", "9.0", "11.0"]
# PTX of compute_90 JITs on every later GPU (10.x, 12.x, 11.0); PTX of 11.0 would not run on 10.x.
PTX_ARCH = "9.0"
HERE = os.path.dirname(os.path.abspath(__file__))


def nvcc_archs(cuda_home):
    try:
        out = subprocess.run(
            [os.path.join(cuda_home, "bin", "nvcc"), "--list-gpu-arch"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {line.split("_")[1] for line in out.split() if line.startswith("compute_")}


def pick_archs(cuda_home):
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"], []
    known = nvcc_archs(cuda_home)
    archs = [a for a in DEFAULT_ARCHS if known is None or a.replace(".", "") in known]
    dropped = [a for a in DEFAULT_ARCHS if a not in archs]
    if archs:  # PTX for 9.0, or for the newest arch this nvcc builds if it cannot build 9.0
        ptx = PTX_ARCH if PTX_ARCH in archs else archs[-1]
        archs = [a + "+PTX" if a == ptx else a for a in archs]
    return ";".join(archs), dropped


def extension_build():
    """(ext_modules, cmdclass, description of what is built)."""
    if os.environ.get("IARED_NO_EXTENSION") == "1":
        return [], {}, "no extension (IARED_NO_EXTENSION=1): pure-PyTorch reference ops"
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = ["python/bindings.cpp", "csrc/cpu/ops_cpu.cpp"]
    cxx = ["-O3", "-fopenmp"]
    kwargs = dict(include_dirs=[os.path.join(HERE, "csrc")], extra_link_args=["-fopenmp"])
    use_cuda = torch.version.cuda is not None and CUDA_HOME is not None and os.environ.get("IARED_FORCE_CPU") != "1"
    if use_cuda:
        archs, dropped = pick_archs(CUDA_HOME)
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        note = f" (dropped {', '.join(dropped)}: this nvcc cannot target them)" if dropped else ""
        what = f"CUDA extension for sm {archs}{note}, nvcc from {CUDA_HOME}, torch {torch.__version__}"
        ext = CUDAExtension(
            "iared_edge._C",
            sources + ["csrc/cuda/ops_cuda.cu"],
            extra_compile_args={"cxx": cxx + ["-DWITH_CUDA"], "nvcc": ["-O3", "-DWITH_CUDA", "-lineinfo"]},
            **kwargs,
        )
    else:
        why = (
            "torch has no CUDA"
            if torch.version.cuda is None
            else "no nvcc (CUDA_HOME)"
            if CUDA_HOME is None
            else "IARED_FORCE_CPU=1"
        )
        what = f"CPU-only C++ extension ({why}), torch {torch.__version__}"
        ext = CppExtension("iared_edge._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}, what


ext_modules, cmdclass, built = extension_build()
print(f"iared-edge: building {built}", flush=True)
with open(os.path.join(HERE, "iared_edge", "_build_info.py"), "w") as f:
    f.write(f'"""Written by setup.py."""\nBUILT = {built!r}\n')

# Metadata, dependencies and the console script are in pyproject.toml; this adds the extension.
setup(ext_modules=ext_modules, cmdclass=cmdclass, zip_safe=False)

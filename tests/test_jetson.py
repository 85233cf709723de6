"""Jetson: the package's metadata, CMake minimum and CUDA targets against what each JetPack ships,
the install scripts (bash -n, shellcheck where installed, their dry runs), and the sample's CSI
camera pipeline. Nothing here needs a Jetson; docs/jetson.md gives the source of every version.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10
    tomllib = pytest.importorskip("tomli")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SCRIPTS = os.path.join(ROOT, "scripts", "jetson")

# What each JetPack ships (docs/jetson.md cites where each comes from): the Python of its Ubuntu,
# the version strings NVIDIA's torch wheels for it carry, and its Ubuntu's stock CMake.
JETPACKS = {
    "5.1": dict(
        supported=False,
        python="3.8.10",  # Ubuntu 20.04
        torch=["2.0.0a0+8aa34602.nv23.03", "2.0.0a0+fe05266f.nv23.04", "2.0.0+nv23.05", "2.1.0a0+41361538.nv23.06"],
        cmake="3.16.3",
    ),
    "6.0": dict(
        supported=True,
        python="3.10.12",  # Ubuntu 22.04
        torch=["2.4.0a0+07cecf4168.nv24.05.14710581", "2.4.0a0+3bcc3cddb5.nv24.07.16234504"],
        cmake="3.22.1",
    ),
    "6.1": dict(
        supported=True,
        python="3.10.12",
        # NVIDIA's redist wheel; the Jetson AI Lab index (jp6/cu126) carries plain releases and rcs
        torch=["2.5.0a0+872d972e41.nv24.08.17622132", "2.4.0", "2.5.0", "2.6.0rc1", "2.8.0"],
        cmake="3.22.1",
    ),
    "6.2": dict(
        supported=True,
        python="3.10.12",
        torch=["2.5.0a0+872d972e41.nv24.08.17622132", "2.5.0", "2.8.0"],
        cmake="3.22.1",
    ),
    "7.0": dict(
        supported=True,
        python="3.12.3",  # Ubuntu 24.04
        torch=["2.9.1"],  # Jetson AI Lab index sbsa/cu130 (Thor)
        cmake="3.28.3",
    ),
}


def _project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _torch_spec() -> SpecifierSet:
    reqs = [r for r in _project()["dependencies"] if re.match(r"torch\b(?!vision)", r)]
    assert len(reqs) == 1, reqs
    return SpecifierSet(reqs[0][len("torch") :])


def _admits(spec: SpecifierSet, version: str) -> bool:
    # pip checks an installed distribution with prereleases=True (resolvelib requirements.py,
    # is_satisfied_by): a pre-release passes when its version is inside the range
    return spec.contains(Version(version), prereleases=True)


@pytest.mark.parametrize("jp", [jp for jp, v in JETPACKS.items() if v["supported"]])
def test_supported_jetpacks_wheels_and_python_are_admitted(jp):
    info, spec = JETPACKS[jp], _torch_spec()
    rejected = [v for v in info["torch"] if not _admits(spec, v)]
    assert not rejected, f"JetPack {jp}: torch{spec} rejects NVIDIA's wheel(s) {rejected}"
    assert SpecifierSet(_project()["requires-python"]).contains(info["python"]), (
        f"JetPack {jp}: requires-python {_project()['requires-python']} rejects its Python {info['python']}"
    )


@pytest.mark.parametrize("jp", [jp for jp, v in JETPACKS.items() if not v["supported"]])
def test_dropped_jetpacks_are_rejected_as_the_docs_say(jp):
    info, spec = JETPACKS[jp], _torch_spec()
    assert not any(_admits(spec, v) for v in info["torch"]), f"JetPack {jp} is documented as unsupported"
    assert not SpecifierSet(_project()["requires-python"]).contains(info["python"])
    with open(os.path.join(ROOT, "docs", "jetson.md")) as f:
        assert re.search(rf"JetPack {re.escape(jp.split('.')[0])}\b[^\n]*not supported", f.read())


def test_torch_floor_admits_nvidias_pre_release_of_it():
    """ ">=2.4" would reject 2.4.0a0+...: PEP 440 orders a pre-release before its release."""
    spec = _torch_spec()
    (floor,) = [s for s in spec if s.operator == ">="]
    assert Version(floor.version).is_prerelease, f"torch{spec}: write the floor as X.Y.0a0"
    base = Version(floor.version).base_version
    assert _admits(spec, f"{base}a0+0123456789.nv99.01")
    assert not _admits(SpecifierSet(f">={base}"), f"{base}a0+0123456789.nv99.01")  # why it matters


def test_docs_state_the_torch_floor_and_cmake_minimum():
    with open(os.path.join(ROOT, "docs", "jetson.md")) as f:
        doc = f.read()
    assert f"torch{_torch_spec()}" in doc.replace(" ", "")
    assert f"CMake {_cmake_minimum()}" in doc


def _cmake_minimum() -> str:
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        m = re.search(r"cmake_minimum_required\(VERSION ([0-9.]+)", f.read())
    return m.group(1)


def test_cmake_minimum_is_met_by_supported_jetpacks_stock_cmake():
    need = Version(_cmake_minimum())
    for jp, info in JETPACKS.items():
        if info["supported"]:
            assert Version(info["cmake"]) >= need, f"JetPack {jp}'s CMake {info['cmake']} < {need}"
    # CUDA_ARCHITECTURES (with -real / -virtual) needs CMake 3.18: no lower minimum is possible
    assert need >= Version("3.18")


def _setup_archs():
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("DEFAULT_ARCHS", "PTX_ARCH"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    return found["DEFAULT_ARCHS"], found["PTX_ARCH"]


def test_cmake_targets_match_setup_py_for_jetson():
    """Orin's sm_87 always, sm_90 with its PTX, Thor's sm_110 where nvcc has compute_110: in both."""
    archs, ptx = _setup_archs()
    assert "8.7" in archs and "11.0" in archs and ptx == "9.0"
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        cmake = f.read()
    assert re.search(r"set\(archs 87-real 90-real 90-virtual\)", cmake)
    assert "compute_110" in cmake and "list(APPEND archs 110-real)" in cmake


# -- the install scripts --------------------------------------------------------------------------
SHELL_SCRIPTS = sorted(
    [os.path.join(SCRIPTS, f) for f in os.listdir(SCRIPTS) if f.endswith(".sh")]
    + [os.path.join(ROOT, "benchmarks", "jetson_install_check.sh")]
)


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=os.path.basename)
def test_scripts_parse_and_pass_shellcheck(path):
    subprocess.run(["bash", "-n", path], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    out = subprocess.run(["shellcheck", "-x", path], capture_output=True, text=True, cwd=os.path.dirname(path))
    assert out.returncode == 0, out.stdout


def _dry_run(script, l4t, soc, **env):
    env = dict(os.environ, DRY_RUN="1", L4T_RELEASE=l4t, JETSON_SOC=soc, VENV="/nonexistent/venv", **env)
    return subprocess.run(["bash", os.path.join(SCRIPTS, script)], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    "script, l4t, soc, arch, index",
    [
        ("install_jp6.sh", "36.4", "tegra234", "8.7", "https://pypi.jetson-ai-lab.io/jp6/cu126"),
        ("install_jp7.sh", "38.2", "tegra264", "11.0", "https://pypi.jetson-ai-lab.io/sbsa/cu130"),
    ],
)
def test_install_dry_run_puts_nvidias_torch_first_and_never_lets_it_be_replaced(script, l4t, soc, arch, index):
    out = _dry_run(script, l4t, soc)
    assert out.returncode == 0, out.stderr
    cmds = [line[2:] for line in out.stdout.splitlines() if line.startswith("+ ")]
    pip = [c for c in cmds if " pip install " in c and "--upgrade pip" not in c]
    assert f"--no-deps --index-url {index} torch" in pip[0]  # torch first,
    assert "torchvision" in pip[1] and "--no-deps" in pip[1]  # then its torchvision
    assert all("--no-deps" in c for c in pip), pip  # and nothing that could pull another torch
    build = [c for c in pip if c.endswith("-e .")]
    assert len(build) == 1 and f"TORCH_CUDA_ARCH_LIST={arch} " in build[0] and "CUDA_HOME=" in build[0]
    assert "--no-build-isolation" in build[0]  # else pip fetches a registry torch to build against
    assert "--system-site-packages" in cmds[0]  # JetPack's OpenCV (GStreamer) and TensorRT bindings


def test_install_scripts_refuse_the_wrong_board_or_jetpack():
    assert _dry_run("install_jp6.sh", "35.4", "tegra194").returncode == 1  # JetPack 5 / Xavier
    assert _dry_run("install_jp6.sh", "38.2", "tegra264").returncode == 1  # JetPack 7 -> install_jp7.sh
    out = _dry_run("install_jp7.sh", "38.2", "tegra234")  # Orin on JetPack 7.0
    assert out.returncode == 1 and "7.2" in out.stderr
    out = _dry_run("install_jp6.sh", "36.3", "tegra234")  # JetPack 6.0: torchvision must be built
    assert out.returncode == 1 and "TORCHVISION_WHEEL" in out.stderr
    out = subprocess.run(["bash", os.path.join(SCRIPTS, "install_jp5.sh")], capture_output=True, text=True)
    assert out.returncode == 1 and "not supported" in out.stderr and "Xavier" in out.stderr


# -- samples/webcam_explain.py --csi ---------------------------------------------------------------
@pytest.fixture(scope="module")
def sample():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "webcam_explain_jetson", os.path.join(ROOT, "samples", "webcam_explain.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_csi_pipeline_string(sample):
    assert sample.csi_pipeline(1, 1920, 1080, 60) == (
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=60/1 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1"
    )
    assert sample.csi_pipeline(0).startswith("nvarguscamerasrc sensor-id=0 ! ")
    assert "width=1280,height=720,framerate=30/1" in sample.csi_pipeline(0)
    assert " ! " in sample.csi_pipeline(0)  # what Runtime.stream takes for a GStreamer pipeline
    for bad in (dict(sensor_id=-1), dict(sensor_id=0, fps=0), dict(sensor_id=0, width=0), dict(sensor_id=True)):
        with pytest.raises(ValueError):
            sample.csi_pipeline(**bad)


def _parsed(sample, monkeypatch, argv):
    """The namespace main() hands to run(), without running anything."""
    seen = {}

    def fake_run(args):
        seen["args"] = args
        return 0

    monkeypatch.setattr(sample, "run", fake_run)
    assert sample.main(argv) == 0
    return seen["args"]


def test_csi_flags_build_the_source(sample, monkeypatch):
    args = _parsed(sample, monkeypatch, ["--csi", "2", "--csi-size", "1920x1080", "--csi-fps", "15"])
    assert sample.source_of(args) == sample.csi_pipeline(2, 1920, 1080, 15)
    args = _parsed(sample, monkeypatch, ["--csi", "0"])
    assert sample.source_of(args) == sample.csi_pipeline(0, 1280, 720, 30)
    args = _parsed(sample, monkeypatch, ["--source", "demo"])
    assert sample.source_of(args) == "demo"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--csi", "0", "--source", "0"], "not allowed with argument"),
        (["--csi-fps", "30"], "apply to --csi only"),
        (["--csi", "-1"], "--csi must be a sensor id >= 0"),
        (["--csi", "0", "--csi-size", "1280"], "expected WIDTHxHEIGHT"),
        (["--csi", "0", "--csi-fps", "0"], "--csi-fps must be >= 1"),
    ],
)
def test_csi_flag_errors_are_clean(sample, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(sample, "run", lambda args: pytest.fail("should not run"))
    with pytest.raises(SystemExit) as exc:
        sample.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err

"""Wheels of what the GPU machine lacks, for ``benchmarks.gpu_check --wheels DIR``.

    python -m benchmarks.gpu_wheels --dest .whl          # here, where pip reaches an index
    # there, with the folder carried along:
    python -m benchmarks.gpu_check --wheels .whl --out DIR

The GPU machine (Python 3.12, x86-64 Linux, no network) has jax with CUDA, flax, optax,
orbax, torch and onnx, but not grain, tensorflow-datasets, ml_collections or tensorboardX.
This downloads, for ``--python`` on manylinux x86-64, the wheels of ``ROOTS`` and of
everything they require (each wheel's ``Requires-Dist``, its environment markers evaluated
for that Python on Linux, extras followed as asked) that the machine's image does not hold
(``PRESENT``). One version of each, no source distributions. The folder is what
``gpu_check --wheels`` installs with ``pip --no-index --no-deps``. It prints the wheels and
their total size (the device tool carries at most 64 MiB with the working tree).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# What the project imports at run time and the GPU image lacks.
ROOTS = ("grain", "tensorflow-datasets", "ml-collections", "tensorboardX", "importlib-resources")

# The GPU image's packages, as read from its package list on 2026-11-17.
PRESENT = frozenset(canonicalize_name(n) for n in """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub
    humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
    lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
    markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
    multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy
    numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
    nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
    nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
    packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
    pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
    pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
    safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
    sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
    sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
    tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
    urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def target_environment(python: str) -> dict:
    """Marker values of CPython ``python`` on x86-64 Linux."""
    env = default_environment()
    env.update(python_version=python, python_full_version=f"{python}.0",
               implementation_name="cpython", platform_python_implementation="CPython",
               sys_platform="linux", platform_system="Linux", platform_machine="x86_64",
               os_name="posix")
    return env


def download(name: str, dest: Path, python: str) -> Path:
    """The one wheel of ``name`` for the target, downloaded into ``dest``; a package published
    only as source (e.g. ``promise``) is built here, and must come out pure Python."""
    before = set(dest.glob("*.whl"))
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", python, "--implementation", "cp", *platforms, "-d", str(dest),
         name], capture_output=True, text=True)
    if fetched.returncode:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                        str(dest), name], check=True)
    new = sorted(set(dest.glob("*.whl")) - before)
    if not new:
        raise SystemExit(f"error: no wheel of {name}: {fetched.stderr.strip()[-300:]}")
    if fetched.returncode and not new[-1].name.endswith("-py3-none-any.whl"):
        raise SystemExit(f"error: {name} is published as source only and built here as "
                         f"{new[-1].name}, which will not run on Python {python}")
    return new[-1]


def requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    return [Requirement(line.split(":", 1)[1].strip()) for line in lines
            if line.startswith("Requires-Dist:")]


def resolve(dest: Path, python: str) -> list[Path]:
    env, done, wheels = target_environment(python), set(), []
    queue = [(r, frozenset()) for r in ROOTS]
    while queue:
        name, extras = queue.pop(0)
        key = canonicalize_name(name)
        if key in PRESENT or key in done:
            continue
        done.add(key)
        wheel = download(name, dest, python)
        wheels.append(wheel)
        for req in requirements(wheel):
            wanted = [""] + sorted(extras)
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e})
                                         for e in wanted):
                queue.append((req.name, frozenset(req.extras)))
    return wheels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=".whl", help="folder for the wheels")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python")
    args = parser.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    wheels = resolve(dest, args.python)
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {dest}")


if __name__ == "__main__":
    main()

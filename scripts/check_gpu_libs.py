"""Check, without a GPU, that ONNX Runtime's CUDA provider finds every library it needs but the driver.

Run it with the Python of the environment to check (the GPU image's venv, or a throw-away venv with
``pip install -r <(python3 docker/requirements.py 'onnxruntime-gpu[cuda,cudnn]') -c docker/constraints-gpu.txt``):

    /opt/venv-gpu/bin/python scripts/check_gpu_libs.py            # in the GPU image
    /tmp/gpu-venv/bin/python scripts/check_gpu_libs.py --tensorrt # also the TensorRT provider

It runs ``ldd`` on ``libonnxruntime_providers_cuda.so`` and on every shared library of the ``nvidia-*``
wheels (cuDNN's sub-libraries and NVRTC are opened at run time, not linked, so they are checked one
by one), with ``LD_LIBRARY_PATH`` set to the wheels' lib folders, as ``onnxruntime.preload_dlls()``
makes them visible. A dependency passes when it resolves inside those folders or in the system's
(/lib, /usr/lib: glibc, libstdc++). It fails when it is not found, or when it resolves somewhere else
(a host CUDA in /usr/local/cuda would hide what the image lacks). Only the driver's libraries
(``libcuda.so.1``, ``libnvidia-*``), which the NVIDIA Container Toolkit mounts at run time, may be
missing. Prints a Markdown table; exit status 1 when anything fails.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: Provided by the host's driver at run time (the NVIDIA Container Toolkit mounts them).
DRIVER_LIBS = re.compile(r"^(libcuda\.so\.1|libnvidia-[\w.-]+\.so(\.\d+)*|libnvcuvid\.so\.1)$")
SYSTEM_PREFIXES = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/", "/lib/x86_64-linux-gnu/")
#: Opened by ONNX Runtime / cuDNN at run time: must be present in the wheels.
RUNTIME_OPENED = (
    "libcudart.so.13",
    "libcublas.so.13",
    "libcublasLt.so.13",
    "libcufft.so.12",
    "libcurand.so.10",
    "libnvrtc.so.13",
    "libcudnn.so.9",
    "libcudnn_graph.so.9",
    "libcudnn_ops.so.9",
    "libcudnn_cnn.so.9",
    "libcudnn_engines_precompiled.so.9",
    "libcudnn_engines_runtime_compiled.so.9",
    "libcudnn_heuristic.so.9",
)


@dataclass
class LibReport:
    """What ``ldd`` said about one library."""

    path: Path
    resolved: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    outside: dict[str, str] = field(default_factory=dict)

    def failures(self) -> list[str]:
        """Dependencies not found (but the driver's) or found outside the allowed folders."""
        bad = [f"{name} not found" for name in self.missing if not DRIVER_LIBS.match(name)]
        bad += [f"{name} from {where}" for name, where in self.outside.items()]
        return bad


def parse_ldd(text: str) -> tuple[dict[str, str], list[str]]:
    """``ldd`` output -> ({soname: resolved path}, [sonames not found])."""
    resolved, missing = {}, []
    for line in text.splitlines():
        line = line.strip()
        match = re.match(r"^(\S+) => not found$", line)
        if match:
            missing.append(match.group(1))
            continue
        match = re.match(r"^(\S+) => (\S+) \(0x[0-9a-f]+\)$", line)
        if match:
            resolved[match.group(1)] = match.group(2)
    return resolved, missing


def ldd(path: Path, lib_dirs: list[Path]) -> LibReport:
    """``ldd path`` with ``lib_dirs`` on ``LD_LIBRARY_PATH``, classified."""
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(str(d) for d in lib_dirs)}
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env, check=False, timeout=60)
    resolved, missing = parse_ldd(out.stdout)
    report = LibReport(path, resolved, missing)
    allowed = [str(d.resolve()) + "/" for d in lib_dirs]
    for name, where in resolved.items():
        real = str(Path(where).resolve())
        if not (real.startswith(tuple(allowed)) or where.startswith(SYSTEM_PREFIXES)):
            report.outside[name] = where
    return report


def environment() -> tuple[Path, list[Path]]:
    """ONNX Runtime's capi folder and the nvidia wheels' (and tensorrt_libs') lib folders here."""
    import onnxruntime as ort

    capi = Path(ort.__file__).parent / "capi"
    site = Path(ort.__file__).parents[1]
    lib_dirs = sorted({p.parent for p in (site / "nvidia").glob("*/lib/*.so*")}) if (site / "nvidia").is_dir() else []
    trt = site / "tensorrt_libs"
    if trt.is_dir():
        lib_dirs.append(trt)
    return capi, [capi, *lib_dirs]


def check(*, tensorrt: bool = False) -> tuple[list[LibReport], list[str]]:
    """ldd reports of the provider library (and TensorRT's) and every wheel library, plus the
    run-time-opened libraries that no lib folder holds."""
    capi, lib_dirs = environment()
    targets = [capi / "libonnxruntime_providers_cuda.so"]
    if tensorrt:
        targets.append(capi / "libonnxruntime_providers_tensorrt.so")
    for folder in lib_dirs[1:]:
        targets += sorted(p for p in folder.glob("*.so*") if p.is_file() and not p.name.endswith(".a"))
    present = {p.name for d in lib_dirs for p in d.glob("*.so*")}
    absent = [name for name in RUNTIME_OPENED if name not in present]
    return [ldd(t, lib_dirs) for t in targets], absent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tensorrt", action="store_true", help="also check libonnxruntime_providers_tensorrt.so")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    capi, lib_dirs = environment()
    reports, absent = check(tensorrt=args.tensorrt)
    print(f"ONNX Runtime {ort.__version__} at {capi.parent}; lib folders: {[str(d) for d in lib_dirs[1:]] or 'none'}")
    print()
    print("| library | dependencies resolved | allowed missing (driver) | failures |")
    print("| --- | --- | --- | --- |")
    failed = bool(absent)
    for r in reports:
        driver = [m for m in r.missing if DRIVER_LIBS.match(m)]
        bad = r.failures()
        failed |= bool(bad)
        print(f"| {r.path.name} | {len(r.resolved)} | {', '.join(driver) or '-'} | {'; '.join(bad) or 'none'} |")
    if absent:
        print(f"\nopened at run time but in no lib folder: {', '.join(absent)}")
    print("\nFAILED: see the failures column" if failed else "\nOK: every dependency resolves but the driver's")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

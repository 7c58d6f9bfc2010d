"""Print the service's requirements (dependencies + the ``serve`` extra) for ``pip install -r``.

    python3 requirements.py onnxruntime                       # CPU-only image
    python3 requirements.py "onnxruntime-gpu[cuda,cudnn]"     # GPU image

The argument replaces the ``onnxruntime-gpu`` requirement of pyproject.toml (its version bound is
kept); versions are pinned by the constraints file given to pip next to this list. Reads
``pyproject.toml`` in the current directory. Standard library only (runs on the bare base image;
Python 3.10 falls back to pip's vendored TOML reader).
"""

import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (e.g. a GPU host's system Python): pip's vendored copy
    from pip._vendor import tomli as tomllib


def requirements(onnxruntime: str, pyproject: str = "pyproject.toml") -> list[str]:
    """The requirement lines, ``onnxruntime-gpu`` swapped for ``onnxruntime``."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    lines = []
    for req in project["dependencies"] + project["optional-dependencies"]["serve"]:
        match = re.match(r"onnxruntime-gpu\b(.*)", req)
        lines.append(onnxruntime + match.group(1) if match else req)
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: requirements.py ONNXRUNTIME_REQUIREMENT")
    print("\n".join(requirements(sys.argv[1])))

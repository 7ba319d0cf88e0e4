"""Library versions recorded with every sweep (results are only comparable with them)."""
from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

_PACKAGES = ("sweep-service", "torch", "torchvision", "nni", "ray", "SQLAlchemy", "numpy", "onnx", "onnxscript",
             "onnxruntime")


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found

"""Where a sweep's results came from: the code, the libraries and the data.

Results are only comparable with the same code, libraries and data. The coordinator
records its project's git commit, its library versions and a hash of the data set's files
with each sweep; each worker reports its own library versions with each trial (they can
differ from the coordinator's on a cluster of several machines or images).
"""
from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# The folder that holds the sweep_service package: the project's checkout, when run from one.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
_PACKAGES = ("sweep-service", "torchvision", "nni", "ray", "SQLAlchemy", "numpy", "scipy", "onnx",
             "onnxscript", "onnxruntime")
GIT_TIMEOUT_S = 5.0


@functools.cache
def library_versions() -> dict[str, str]:
    """Python's and the libraries' versions; torch's full build string (e.g. 2.14.1+cu130:
    the package metadata leaves out which CUDA build it is)."""
    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def source_commit(root: Path = PROJECT_ROOT, timeout: float = GIT_TIMEOUT_S) -> dict[str, Any]:
    """The git commit of the checkout at `root` and whether tracked files differ from it:
    {"git_commit": sha or None, "git_dirty": bool or None, "git_note": why there is no sha}.
    An installed package (no checkout of its own at `root`), a missing git command or one
    that does not answer in `timeout` seconds give no commit and say which."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=timeout)

    try:
        top = git("rev-parse", "--show-toplevel")
        # A folder inside some other repository (a venv's site-packages in a checkout) is not ours.
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
            return {"git_commit": None, "git_dirty": None, "git_note": "not a git checkout"}
        head = git("rev-parse", "HEAD")
        changes = git("status", "--porcelain", "--untracked-files=no")
    except FileNotFoundError:
        return {"git_commit": None, "git_dirty": None, "git_note": "git is not installed"}
    except subprocess.TimeoutExpired:
        return {"git_commit": None, "git_dirty": None, "git_note": f"git did not answer in {timeout:g} s"}
    if head.returncode != 0:  # a repository without a commit yet
        return {"git_commit": None, "git_dirty": None, "git_note": "no commit yet"}
    return {"git_commit": head.stdout.strip(), "git_dirty": bool(changes.stdout.strip()), "git_note": ""}


def folder_digest(folder: Path) -> dict[str, Any]:
    """sha256 over the files under `folder` in sorted order of their relative paths, each
    preceded by its path and size (so that renaming or splitting files changes the hash),
    with the count and total size of the files."""
    folder = Path(folder)
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())
    digest = hashlib.sha256()
    total = 0
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        total += size
    return {"sha256": digest.hexdigest(), "files": len(files), "bytes": total}


def describe_commit(provenance: dict[str, Any], *, full: bool = False) -> str:
    """'3f2a1b0c9d8e (with uncommitted changes)', or why there is no commit."""
    commit = provenance.get("git_commit")
    if not commit:
        return provenance.get("git_note") or "not recorded"
    return (commit if full else commit[:12]) + (" (with uncommitted changes)" if provenance.get("git_dirty") else "")

"""Provenance: the project's git commit (or why there is none), library versions with
torch's full build string, and a hash of the data set's files."""
from __future__ import annotations

import hashlib
import subprocess
from importlib.metadata import version

import pytest
import torch

from sweep_service.provenance import PROJECT_ROOT, describe_commit, folder_digest, library_versions, source_commit


def _git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("x = 1\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "first")
    return root


def test_a_checkout_records_its_commit_and_whether_files_changed(repo):
    found = source_commit(repo)
    assert found == {"git_commit": _git(repo, "rev-parse", "HEAD"), "git_dirty": False, "git_note": ""}
    (repo / "pkg" / "a.py").write_text("x = 2\n")
    changed = source_commit(repo)
    assert changed["git_dirty"] is True and changed["git_commit"] == found["git_commit"]
    assert describe_commit(changed) == found["git_commit"][:12] + " (with uncommitted changes)"
    assert describe_commit(changed, full=True).startswith(found["git_commit"])


def test_the_projects_own_checkout_is_recognised():
    head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip(f"{PROJECT_ROOT} is not a git checkout here")
    assert source_commit()["git_commit"] == head.stdout.strip()


def test_no_commit_says_why(repo, tmp_path, monkeypatch):
    # A folder inside another repository (as an installed package in a venv inside a
    # checkout would be) is not a checkout of its own.
    assert source_commit(repo / "pkg") == {"git_commit": None, "git_dirty": None, "git_note": "not a git checkout"}
    plain = tmp_path / "plain"
    plain.mkdir()
    assert source_commit(plain)["git_note"] == "not a git checkout"
    empty = tmp_path / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")
    assert source_commit(empty)["git_note"] == "no commit yet"
    assert describe_commit(source_commit(plain)) == "not a git checkout"
    assert describe_commit({}) == "not recorded"

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    assert source_commit(repo)["git_note"] == "git is not installed"
    hanging = bin_dir / "git"
    hanging.write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    hanging.chmod(0o755)
    assert source_commit(repo, timeout=0.5)["git_note"] == "git did not answer in 0.5 s"


def test_library_versions_give_torchs_full_build_string():
    versions = library_versions()
    assert versions["torch"] == torch.__version__
    assert versions["torch"].startswith(version("torch"))  # the metadata lacks the local part (+cu130)
    assert {"python", "torchvision", "nni", "ray", "numpy", "scipy"} <= set(versions)


def test_folder_digest_covers_names_sizes_and_contents_in_sorted_order(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, order in ((one, ("b", "a")), (two, ("a", "b"))):  # written in another order
        (folder / "sub").mkdir(parents=True)
        for name in order:
            (folder / name).write_bytes(name.encode() * 3)
        (folder / "sub" / "c").write_bytes(b"")
    expected = hashlib.sha256(b"a\x003\x00aaa" + b"b\x003\x00bbb" + b"sub/c\x000\x00").hexdigest()
    assert folder_digest(one) == folder_digest(two) == {"sha256": expected, "files": 3, "bytes": 6}
    (two / "b").write_bytes(b"bbB")
    assert folder_digest(two)["sha256"] != expected
    (two / "b").write_bytes(b"bbb")
    (two / "b").rename(two / "B")
    assert folder_digest(two)["sha256"] != expected


def test_a_resumed_sweep_keeps_the_data_hashes_and_commits_of_its_earlier_runs(tmp_path):
    from sweep_service.coordinator.sweep import sweep_provenance

    data = tmp_path / "data"
    data.mkdir()
    (data / "batch").write_bytes(b"1")
    first = sweep_provenance(data, {})
    assert first["data_files"] == 1 and first["earlier_data_sha256"] == [] and first["earlier_git_commits"] == []
    assert sweep_provenance(data, first)["earlier_data_sha256"] == []  # resumed on the same data
    (data / "batch").write_bytes(b"2")
    second = sweep_provenance(data, {**first, "git_commit": "0ld"})
    assert second["earlier_data_sha256"] == [first["data_sha256"]]
    assert second["earlier_git_commits"] == ["0ld"]
    (data / "batch").write_bytes(b"1")  # back to the first data: now the second's is the earlier one
    third = sweep_provenance(data, second)
    assert third["earlier_data_sha256"] == [second["data_sha256"]] and third["earlier_git_commits"] == ["0ld"]

from __future__ import annotations

import os

import pytest

from sweep_service.files import write_atomic


@pytest.mark.parametrize("size", [0, 1, 4096, 3 * 2**20 + 123])
def test_written_files_hold_exactly_the_data(tmp_path, size):
    data = os.urandom(size)
    target = tmp_path / "model.pt"
    target.write_bytes(b"an older model, longer than some of the new ones" * 100)
    write_atomic(target, data)
    assert target.read_bytes() == data and oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "index.html"
    target.write_text("old page")
    write_atomic(target, b"new page")
    assert target.read_text() == "new page"

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(OSError):
        write_atomic(target, b"half")
    assert target.read_text() == "new page"  # a reader still sees the whole old file
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]  # no temporary file left

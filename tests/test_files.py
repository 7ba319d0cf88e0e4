from __future__ import annotations

import errno
import os

import pytest

from sweep_service.files import write_atomic

# Around the block and chunk sizes of the uncached path: no whole block, exactly one,
# a tail after the blocks, and several chunks with a tail.
SIZES = [0, 1, 4095, 4096, 4097, 3 * 2**20 + 123]


def _direct_io_works(folder) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    os.unlink(folder / "probe")
    return True


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("size", SIZES)
def test_written_files_hold_exactly_the_data(tmp_path, size, cached):
    data = os.urandom(size)
    target = tmp_path / "model.pt"
    target.write_bytes(b"an older model, longer than some of the new ones" * 100)
    write_atomic(target, data, cached=cached)
    assert target.read_bytes() == data and oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_uncached_writes_bypass_the_page_cache_where_the_file_system_allows(tmp_path, monkeypatch):
    if not _direct_io_works(tmp_path):
        pytest.skip("this file system takes no O_DIRECT writes (the fallback is tested below)")
    import fcntl

    modes = []
    write = os.write

    def spy(fd, data):
        modes.append((len(data), bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)))
        return write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    data = os.urandom(2 * 2**20 + 10)
    write_atomic(tmp_path / "model.pt", data, cached=False)
    # Two aligned chunks past the cache, then the 10-byte tail through it.
    assert modes == [(2**20, True), (2**20, True), (10, False)]
    assert (tmp_path / "model.pt").read_bytes() == data


def test_uncached_writes_fall_back_where_o_direct_is_refused(tmp_path, monkeypatch):
    import fcntl

    set_flags = fcntl.fcntl

    def refuse_direct(fd, command, *args):
        if command == fcntl.F_SETFL and args[0] & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return set_flags(fd, command, *args)

    monkeypatch.setattr(fcntl, "fcntl", refuse_direct)
    data = os.urandom(3 * 2**20 + 123)
    write_atomic(tmp_path / "model.pt", data, cached=False)
    assert (tmp_path / "model.pt").read_bytes() == data


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

"""emocircuits.cache.atomic_write when the writer fails: nothing half-written is left on disk.

(Beside tests/test_cache.py, which covers the rest of the cache module.)"""

from __future__ import annotations

import pytest

from emocircuits.cache import atomic_write, atomic_write_text


class WriterFailed(RuntimeError):
    pass


def _half_write(path):
    path.write_text("half a fi")  # the writer has started on the temporary file when it fails
    raise WriterFailed("disk full")


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    dest = tmp_path / "metrics.json"
    atomic_write_text(dest, "old\n")
    with pytest.raises(WriterFailed, match="disk full"):
        atomic_write(dest, _half_write)
    assert dest.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failing_writer_creates_no_destination_and_leaves_no_temporary_file(tmp_path):
    dest = tmp_path / "sub" / "directions.safetensors"
    with pytest.raises(WriterFailed):
        atomic_write(dest, _half_write)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_a_writer_that_fails_before_writing_leaves_no_temporary_file(tmp_path):
    def fail(path):
        raise WriterFailed("before the first byte")

    with pytest.raises(WriterFailed):
        atomic_write(tmp_path / "out.jsonl", fail)
    assert list(tmp_path.iterdir()) == []

"""io/atomic's one-file helpers: the only place defacer writes a file through a temporary name and a rename."""

from __future__ import annotations

from pathlib import Path

import pytest

from defacer.io.atomic import TEMP_PREFIX, atomic_file, copy_atomic, write_bytes_atomic, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "summary.html"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as temp:
        temp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.html"]


def test_helpers_write_whole_files_under_the_final_name_only(tmp_path: Path) -> None:
    with atomic_file(tmp_path / "deep" / "boxes.npz", durable=True) as temp:
        assert temp.name.startswith(TEMP_PREFIX) and temp.name.endswith("-boxes.npz"), "the ending is kept"
        assert temp.parent == tmp_path / "deep"
        temp.write_bytes(b"x")
    assert write_text_atomic(tmp_path / "a.json", "{}\n", durable=True).read_text() == "{}\n"
    assert write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert copy_atomic(tmp_path / "b.bin", tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "b.bin", "boxes.npz", "c.bin", "deep"]

"""Atomic writes: the target holds the old or the complete new content, never a partial one."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsvlm.io.atomic import atomic_folder, atomic_write, atomic_write_text


def _write_half_then_fail(tmp: Path) -> None:
    tmp.write_text("half")
    raise RuntimeError("disk full (simulated)")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "record.json"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError, match="simulated"):
        atomic_write(path, _write_half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        atomic_write_text(path, "new", overwrite=False)
    assert atomic_write(path, lambda tmp: tmp.write_bytes(b"new")).read_bytes() == b"new"


def test_a_folder_appears_only_when_every_file_is_written(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("kept")
    (out / "weights.bin").write_text("old weights")
    with pytest.raises(RuntimeError, match="simulated"), atomic_folder(out) as tmp:
        (tmp / "weights.bin").write_text("new weights")
        _write_half_then_fail(tmp / "config.json")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "weights.bin"]
    assert (out / "weights.bin").read_text() == "old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary folder left

    with atomic_folder(out) as tmp:
        (tmp / "weights.bin").write_text("new weights")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text("{}")
    files = {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()}
    assert files == {"keep.txt": "kept", "weights.bin": "new weights", "sub/config.json": "{}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_new_folder_is_created(tmp_path):
    with atomic_folder(tmp_path / "a" / "b") as tmp:
        (tmp / "x.txt").write_text("x")
    assert (tmp_path / "a" / "b" / "x.txt").read_text() == "x"

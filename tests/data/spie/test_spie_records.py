"""SPIE records: JSON-lines round trip, a half-written last line, malformed lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rsvlm.data.spie.records import RecordError, SpieRecord, append_records, read_records, repair_jsonl


def _record(tmp_path: Path, i: int, tile=None) -> SpieRecord:
    return SpieRecord(
        image=str(tmp_path / "images" / f"t{i}.tif"),
        mask=str(tmp_path / "masks" / f"t{i}_water.tif"),
        category="water",
        bands=["blue", "green"],
        spectral_prompt=f"[{{'Size of area': 'small'}}] {i}",
        instruction=f"instr ü {i}",
        response=f"resp\n{i}",
        split="train",
        source="s",
        tile=tile,
    )


def test_records_round_trip(tmp_path):
    recs = [_record(tmp_path, 0), _record(tmp_path, 1, tile=[0, 512, 512, 100])]
    recs[1].mask = "/elsewhere/m.tif"  # outside the folder: stays absolute
    path = tmp_path / "spie.jsonl"
    append_records(path, recs[:1])
    append_records(path, recs[1:])
    assert read_records(path) == recs
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["image"] == "images/t0.tif"  # stored relative to the file's folder
    assert lines[1]["mask"] == "/elsewhere/m.tif"


def test_truncated_last_line_is_ignored_and_repaired(tmp_path):
    path = tmp_path / "spie.jsonl"
    append_records(path, [_record(tmp_path, i) for i in range(3)])
    text = path.read_text()
    path.write_text(text[: len(text) - 25])  # crash in the middle of line 3
    with pytest.warns(UserWarning, match="half-written"):
        assert len(read_records(path)) == 2
    append_records(path, [_record(tmp_path, 7)])
    recs = read_records(path)
    assert [r.response for r in recs] == ["resp\n0", "resp\n1", "resp\n7"]
    assert repair_jsonl(path) == 0


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "spie.jsonl"
    append_records(path, [_record(tmp_path, 0)])
    with open(path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(RecordError, match=r"spie.jsonl:2"):
        read_records(path)
    path.write_text(json.dumps({"image": "a.tif"}) + "\n")
    with pytest.raises(RecordError, match="missing field"):
        read_records(path)

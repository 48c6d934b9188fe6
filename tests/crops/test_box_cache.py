"""MagCropBoxCache against MagCrop.find_boxes run by hand on each training record with the initial
model: the file it writes, the boxes the cropper reads while training, online boxes outside training,
and a resumed run that reads the file instead of recomputing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from rsvlm.contracts import ContractError
from rsvlm.crops.box_cache import CACHE_NAME, BoxCache, MagCropBoxCache, record_ids

REPO = Path(__file__).resolve().parents[2]


class _Trainer:
    """What the callback reads of a Lightning trainer."""

    def __init__(self, datamodule, log_dir: Path, rank: int = 0, world: int = 1) -> None:
        self.datamodule, self.log_dir, self.default_root_dir = datamodule, str(log_dir), str(log_dir)
        self.global_rank, self.world_size, self.is_global_zero = rank, world, rank == 0


@pytest.fixture(scope="module")
def geomag(tmp_path_factory, _offline_cache):
    """The GeoMag demo recipe's model (random weights) and its data module on a few generated scenes."""
    from rsvlm.inference.evaluate import build_from_config

    config = yaml.safe_load((REPO / "recipes" / "geomag-demo.yaml").read_text())
    config["data"]["init_args"]["generate"].update(n_train=6, n_val=2, n_test=2)
    config["data"]["init_args"]["batch_size"] = 4
    model, data = build_from_config(config)
    data.prepare_data()
    data.setup("fit")
    data.set_text_formatter(model.llm.formatter)
    return model, data


def test_the_cache_holds_each_training_records_psc_boxes_of_the_initial_model(geomag, tmp_path):
    model, data = geomag
    initial = copy.deepcopy(model)
    initial.cropper.bind(initial)  # a copy comes back unbound
    callback = MagCropBoxCache(progress=False)
    callback.on_fit_start(_Trainer(data, tmp_path), model)
    written = json.loads((tmp_path / CACHE_NAME).read_text())
    collate = data.collate_fn()
    expected = {}
    for index in range(len(data.datasets["train"])):  # one record at a time, by hand
        batch = collate([data.datasets["train"][index]])
        level = batch["granularity"][0]
        boxes = initial.cropper.find_boxes(batch["image"], batch, [level])[0]
        if boxes is not None:
            expected[record_ids(batch)[0]] = [[int(v) for v in box] for box in boxes]
    assert written == expected and len(expected) > 0
    levels = {len(b) for b in expected.values()}
    assert levels == {1, 2}  # region samples have b₁, pixel samples b₁ and b₂
    assert model.cropper.box_cache.boxes == expected
    # two processes: each finds its shard, and the shards are the whole split without overlap
    shards = [
        MagCropBoxCache(progress=False).find_all(_Trainer(data, tmp_path, r, 2), model, model.cropper) for r in (0, 1)
    ]
    assert not set(shards[0]) & set(shards[1]) and {**shards[0], **shards[1]} == expected


def test_training_reads_the_cache_and_evaluation_stays_online(geomag, tmp_path):
    model, data = geomag
    MagCropBoxCache(progress=False).on_fit_start(_Trainer(data, tmp_path), model)
    batch = data.collate_fn()([data.datasets["train"][i] for i in range(4)])
    cache = model.cropper.box_cache
    given = {**batch, "magcrop_boxes": cache.lookup(batch)}
    try:
        model.train()
        calls = []
        original = model.cropper.find_boxes
        model.cropper.find_boxes = lambda *a, **k: calls.append(1) or original(*a, **k)
        trained = model.cropper(batch["image"], batch)
        assert calls == []  # no attention pass while training
        model.cropper.boxes = "given"
        torch.testing.assert_close(trained, model.cropper(batch["image"], given), rtol=0, atol=0)
        model.cropper.boxes = "online"
        model.eval()
        model.cropper(batch["image"], batch)
        assert calls == [1]  # evaluation finds its boxes with the model as it is
    finally:
        model.cropper.find_boxes = original
        model.cropper.boxes = "online"
        model.cropper.box_cache = None
        model.eval()


def test_a_resumed_run_reads_the_file_and_a_batch_without_ids_is_named(geomag, tmp_path):
    model, data = geomag
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"some_record": [[0, 0, 8, 8]]}))
    try:
        MagCropBoxCache(path=str(path), progress=False).on_fit_start(_Trainer(data, tmp_path), model)
        assert model.cropper.box_cache.boxes == {"some_record": [[0, 0, 8, 8]]}  # read, not recomputed
        assert json.loads(path.read_text()) == {"some_record": [[0, 0, 8, 8]]}  # and left as it was
    finally:
        model.cropper.box_cache = None
    with pytest.raises(ContractError, match="'meta' has no 'id'"):
        BoxCache({}).lookup({"image": torch.zeros(1)})

"""SceneSegmentationDataModule on the datamodule base: split aliases of folder sources and a
training loader that resumes mid-epoch at the next unseen batch."""

from __future__ import annotations

import torch

from rsvlm.data.scenes import write_scene_folder
from rsvlm.data.segmentation import SceneSegmentationDataModule, SegmentationSource, discover


def _dm() -> SceneSegmentationDataModule:
    dm = SceneSegmentationDataModule(n_train=7, n_val=1, n_test=1, size=16, batch_size=2, seed=5)
    dm.setup("fit")
    return dm


def test_train_loader_resumes_at_the_next_unseen_batch():
    first = _dm()
    loader = first.train_dataloader()
    loader.sampler.set_epoch(3)
    batches = iter(loader)
    seen = [next(batches) for _ in range(2)]
    state = first.state_dict()
    rest = list(batches)
    assert len(seen) + len(rest) == len(loader)

    resumed = _dm()
    resumed.load_state_dict(state)
    again = list(resumed.train_dataloader())
    assert len(again) == len(rest)
    for a, b in zip(again, rest):
        for key in ("image", "classes", "valid"):
            torch.testing.assert_close(a[key], b[key])


def test_split_folder_aliases(tmp_path):
    write_scene_folder(tmp_path / "gen", 4, 16, "demo", seed=0)
    for alias in ("training", "validation"):
        (tmp_path / "tree" / alias / "images").mkdir(parents=True)
        (tmp_path / "tree" / alias / "labels").mkdir(parents=True)
        for sub in ("images", "labels"):
            src = tmp_path / "gen" / sub / f"scene_0000{int(alias == 'validation')}.tif"
            (tmp_path / "tree" / alias / sub / "a.tif").write_bytes(src.read_bytes())
    items, spec = discover(SegmentationSource(root=str(tmp_path / "tree"), bands="demo"))
    assert sorted(it.split for it in items) == ["train", "val"]
    assert len(spec) == 6

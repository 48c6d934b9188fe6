"""Prompted extraction samples: one region of the target, marked by a point, box or scribble."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.measure import label
from torch.utils.data import Dataset

from rsvlm.data.generated import GeneratedData
from rsvlm.data.prompted import PromptedSamples, PromptSampling, pick_region


def three_regions() -> np.ndarray:
    """A 40×40 target: a 10×10 square, a diagonal run of 6 pixels (8-connected), one 3×3 square."""
    target = np.zeros((40, 40), bool)
    target[2:12, 2:12] = True
    for i in range(6):
        target[20 + i, 20 + i] = True
    target[35:38, 5:8] = True
    return target


class Scenes(Dataset):
    """Samples of the batch contract around fixed targets."""

    def __init__(self, targets: list[np.ndarray]) -> None:
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, item):
        index = item[0] if isinstance(item, tuple) else item
        target = torch.from_numpy(self.targets[index].astype(np.float32))[None]
        return {
            "image": torch.zeros(3, *target.shape[-2:]),
            "mask": target,
            "valid": torch.ones_like(target, dtype=torch.bool),
            "category": "water",
            "instruction": "Describe the water regions.",
            "response": "Two water regions.",
            "meta": {"index": index},
        }


def test_regions_are_8_connected_and_small_ones_are_never_picked():
    target = three_regions()
    reference = label(target, connectivity=2)  # skimage: 8-connectivity in 2-D
    picked = {int(reference[pick_region(target, min_area=6, rng=np.random.default_rng(s))].max()) for s in range(60)}
    # all three reach min_area 6; the diagonal counts as one region only with 8-connectivity
    sizes = {r: int((reference == r).sum()) for r in picked}
    assert sorted(sizes.values()) == [6, 9, 100]
    assert pick_region(target, min_area=10, rng=np.random.default_rng(0)).sum() == 100
    assert pick_region(target, min_area=101, rng=np.random.default_rng(0)) is None
    assert pick_region(np.zeros((5, 5), bool), min_area=1, rng=np.random.default_rng(0)) is None


@pytest.mark.parametrize("kind", ["point", "box", "scribble"])
def test_a_prompted_sample_targets_the_region_its_prompt_marks(kind):
    target = three_regions()
    samples = PromptedSamples(Scenes([target] * 12), PromptSampling(probability=1.0, kinds=[kind], min_area=5))
    reference = label(target, connectivity=2)
    for index in range(12):
        sample = samples[index]
        region = sample["mask"][0].numpy() > 0.5
        ids = set(np.unique(reference[region]).tolist())
        assert len(ids) == 1 and 0 not in ids and region.sum() == (reference == ids.pop()).sum()  # one whole region
        assert sample["task"] == "prompted"
        assert sample["instruction"] == "Segment the water region marked by Region 1."
        [prompt] = sample["visual_prompts"]
        assert prompt.kind == kind
        if kind == "box":
            rows, cols = np.nonzero(region)
            x0, y0, x1, y1 = prompt.box
            width, height = cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()
            # SPHINX-V's jitter: the centre moves by at most 1/8 of the size, sides scale by 0.85–1.15
            assert abs((x0 + x1) / 2 - (cols.min() + cols.max() + 1) / 2) <= width / 8 + 1e-6
            assert 0.85 * height - 1e-6 <= y1 - y0 <= 1.15 * height + 1e-6 or y0 == 0 or y1 == 40
        else:
            cells = np.floor(prompt.vertices).astype(int)
            assert region[cells[:, 1], cells[:, 0]].all()  # every vertex lies in the region


def test_probability_zero_leaves_samples_as_they_were_with_empty_prompts():
    base = Scenes([three_regions()])
    sample = PromptedSamples(base, PromptSampling(probability=0.0))[0]
    assert sample["visual_prompts"] == [] and sample["task"] == "land_cover"
    assert torch.equal(sample["mask"], base[0]["mask"]) and sample["instruction"] == base[0]["instruction"]


def test_evaluation_draws_repeat_and_training_draws_change_with_the_epoch_seed():
    samples = PromptedSamples(Scenes([three_regions()] * 40), PromptSampling(probability=0.5, min_area=5))
    first = [samples[i]["task"] for i in range(40)]
    assert first == [samples[i]["task"] for i in range(40)]
    assert 8 < first.count("prompted") < 32  # about half
    epochs = {tuple(samples[(i, seed)]["task"] for i in range(40)) for seed in (1, 2, 3)}
    assert len(epochs) > 1


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match=r"PromptSampling.probability must be in \[0, 1\]"):
        PromptSampling(probability=1.5)
    with pytest.raises(ValueError, match="PromptSampling.kinds must be among"):
        PromptSampling(kinds=["lasso"])


def test_the_datamodule_batches_prompts_and_tasks(tmp_path):
    from rsvlm.data.spie.datamodule import SpieDataModule

    data = GeneratedData(root=str(tmp_path), n_train=4, n_val=2, n_test=1, size=32, categories=["water"])
    dm = SpieDataModule(generate=data, image_size=32, batch_size=4, prompts=PromptSampling(probability=1.0, min_area=4))
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    prompts = batch["visual_prompts"]
    assert prompts.batch_size == len(batch["task"]) == 4 and prompts.image_size == (32, 32)
    prompted = [i for i, t in enumerate(batch["task"]) if t == "prompted"]
    assert prompted and all(prompts.valid[i].sum() == 1 for i in prompted)
    assert all(prompts.valid[i].sum() == 0 for i in range(4) if i not in prompted)

"""InstructDataModule's ``overlay`` (prompts drawn on every split's images, against a direct call of
``overlay_sample`` and against the blend written out by hand) and ``split_modalities`` (one split
filtered by modality, the others left whole), on generated EarthGPT-X records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rsvlm.data.modalities import MODALITY_IDS
from rsvlm.data.multitask.datamodule import InstructDataModule
from rsvlm.data.multitask.generated_multisource import MODALITY_PRESETS, GeneratedMultisourceData
from rsvlm.data.overlaid import OverlaidSamples, overlay_sample
from rsvlm.data.visual_prompts import VisualPrompt
from rsvlm.prompts.geometry import PALETTE
from rsvlm.prompts.overlay import OverlayPrompts

S = 64
MODALITY_NAMES = {i: name for name, i in MODALITY_IDS.items()}


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> GeneratedMultisourceData:
    """Six scenes per split (two per modality), three records each; built once."""
    root = tmp_path_factory.mktemp("multisource")
    data = GeneratedMultisourceData(root=str(root), n_train=6, n_val=6, n_test=6, size=S, progress=False)
    data.prepare()
    return data


def module(generator: GeneratedMultisourceData, **kwargs) -> InstructDataModule:
    dm = InstructDataModule(generate=generator, modality_presets=MODALITY_PRESETS, image_size=S, batch_size=2, **kwargs)
    dm.setup("fit")
    return dm


def same_prompts(a: list[VisualPrompt], b: list[VisualPrompt]) -> bool:
    """Equal kinds, boxes, vertices and masks, slot for slot."""
    arrays = ("vertices", "mask")
    return len(a) == len(b) and all(
        p.kind == q.kind
        and p.box == q.box
        and all((getattr(p, f) is None) == (getattr(q, f) is None) for f in arrays)
        and all(getattr(p, f) is None or np.array_equal(getattr(p, f), getattr(q, f)) for f in arrays)
        for p, q in zip(a, b)
    )


def test_overlay_draws_every_split_as_overlay_sample_and_keeps_the_prompts(generator) -> None:
    overlay = OverlayPrompts()
    plain, drawn = module(generator), module(generator, overlay=overlay)
    prompted = 0
    for split in ("train", "val", "test"):
        assert isinstance(drawn.datasets[split], OverlaidSamples) and drawn.datasets[split].overlay is overlay
        assert len(drawn.datasets[split]) == len(plain.datasets[split]) == 18
        for i in range(len(plain.datasets[split])):
            sample, got = plain.datasets[split][i], drawn.datasets[split][i]
            expected = overlay_sample(overlay, sample)
            assert torch.equal(got["image"], expected["image"])
            assert same_prompts(got["visual_prompts"], sample["visual_prompts"])  # SAM's prompt encoder reads them
            assert got["instruction"] == sample["instruction"] and got["task"] == sample["task"]
            changed = not torch.equal(got["image"], sample["image"])
            assert changed == bool(sample["visual_prompts"]), (split, i, sample["task"])
            prompted += changed
    assert prompted == 36  # referring classification and gcg of each of the 18 scenes; grounding is asked in words


def test_overlay_blends_slot_1s_colour_over_the_box_outline(generator) -> None:
    overlay = OverlayPrompts(alpha=160, line_width=2)
    plain, drawn = module(generator), module(generator, overlay=overlay)
    train = plain.datasets["train"]
    index = next(
        i
        for i in range(len(train))
        if train[i]["visual_prompts"] and train[i]["visual_prompts"][0].kind == "box" and train[i]["modality"] == 0
    )
    sample, got = train[index], drawn.datasets["train"][index]
    x0, y0, x1, y1 = (int(round(v)) for v in sample["visual_prompts"][0].box)
    a = 160 / 255
    red = torch.tensor(PALETTE[0], dtype=torch.float64) / 255  # optical images are DN / 255: white is 1
    on_edge = sample["image"][:, y0, x0 + 1].double()
    assert torch.allclose(got["image"][:, y0, x0 + 1].double(), on_edge + a * (red - on_edge), atol=1e-6)
    inside = (y0 + y1) // 2, (x0 + x1) // 2
    if x1 - x0 > 4 and y1 - y0 > 4:  # the outline leaves the box's inside as it was
        assert torch.equal(got["image"][:, inside[0], inside[1]], sample["image"][:, inside[0], inside[1]])


def test_split_modalities_filters_only_the_named_split(generator) -> None:
    dm = module(generator, split_modalities={"train": ["sar"]})
    modalities = {
        split: {MODALITY_NAMES[s["modality"]] for s in dm.datasets[split]} for split in ("train", "val", "test")
    }
    assert modalities == {"train": {"sar"}, "val": set(MODALITY_IDS), "test": set(MODALITY_IDS)}
    assert len(dm.datasets["train"]) == 6 and len(dm.datasets["test"]) == 18  # 2 SAR scenes × 3 tasks; all 6 × 3
    assert sum(dm.group_sizes().values()) == 6
    both = module(generator, split_modalities={"train": ["optical", "infrared"], "test": ["infrared"]})
    assert {MODALITY_NAMES[s["modality"]] for s in both.datasets["train"]} == {"optical", "infrared"}
    assert {MODALITY_NAMES[s["modality"]] for s in both.datasets["test"]} == {"infrared"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"train": ["radar"]}, "InstructDataModule.split_modalities['train']: unknown modality(ies) ['radar']"),
        ({"dev": ["sar"]}, "InstructDataModule.split_modalities: unknown split 'dev'"),
        ({"train": []}, "InstructDataModule.split_modalities['train']: needs a non-empty list"),
    ],
)
def test_bad_split_modalities_are_named(generator, value, message) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        InstructDataModule(generate=generator, modality_presets=MODALITY_PRESETS, split_modalities=value)


def test_records_path_of_the_generator_is_read(generator) -> None:
    # the options act on the generator's records, read as one more source
    dm = module(generator, split_modalities={"test": ["optical"]})
    assert Path(dm.sources[-1]) == generator.records_path()
    assert {s["meta"]["record_meta"]["modality"] for s in dm.datasets["test"]} == {"optical"}

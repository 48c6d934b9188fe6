"""InstructDataModule on records written by the GeoPixelD, RSVQA and DIOR-RSVG converters from their
fixtures: batch fields and shapes, masks against transforms.resize_pad, boxes against a rasterised box
carried by the image, group proportions of the train sampler, text formatting and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from test_dior_rsvg import write_dataset as write_dior
from test_geopixeld import H as GEO_H
from test_geopixeld import W as GEO_W
from test_geopixeld import expected_masks, write_geopixeld
from test_rsvqa import write_rsvqa

from rsvlm.data.loaders import ResumableDataLoader
from rsvlm.data.mixing import MixtureSampler
from rsvlm.data.multitask import InstructRecord, InstructRecordError, Turn, write_records
from rsvlm.data.multitask.converters import convert_dior_rsvg, convert_geopixeld, convert_rsvqa
from rsvlm.data.multitask.datamodule import InstructDataModule, SourceOptions
from rsvlm.data.transforms import resize_pad

S = 32


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Records files: GeoPixelD (train 2, test 1), RSVQA-LR (train 4), DIOR-RSVG (train 2 × 2 tasks)."""
    root = tmp_path_factory.mktemp("records").resolve()
    geo = write_geopixeld(root / "GeoPixelD")
    vqa = write_rsvqa(root / "RSVQA_LR")
    dior = write_dior(root / "DIOR_RSVG")
    out = {
        "geo": write_records(root / "geo.jsonl", convert_geopixeld(geo, "train") + convert_geopixeld(geo, "test")),
        "vqa": write_records(root / "vqa.jsonl", convert_rsvqa(vqa, "lr", "train")),
        "dior": write_records(
            root / "dior.jsonl", convert_dior_rsvg(dior, "train", tasks=["grounding", "referring_classification"])
        ),
    }
    return out


def module(sources: list[Path], **kwargs) -> InstructDataModule:
    dm = InstructDataModule([str(s) for s in sources], image_size=kwargs.pop("image_size", S), **kwargs)
    dm.setup("fit")
    return dm


def by_id(dm: InstructDataModule, split: str, record_id: str) -> dict:
    dataset = dm.datasets[split]
    return dataset[next(i for i, item in enumerate(dataset.items) if item.record.id == record_id)]


def test_batches_have_the_instruction_fields_and_shapes(files: dict[str, Path]) -> None:
    dm = module([files["geo"], files["vqa"]], batch_size=3)
    assert dm.group_sizes() == {("geopixeld", "gcg"): 2, ("rsvqa_lr", "vqa"): 4}
    assert len(dm.datasets["test"]) == 1 and len(dm.datasets["val"]) == 0
    train = dm.datasets["train"]
    batch = dm.collate_fn()([train[0], train[1], train[2]])  # gcg (3 masks), gcg (2 masks), vqa (none)
    assert batch["image"].shape == (3, 3, S, S) and batch["image"].dtype == torch.float32
    assert batch["valid"].shape == (3, 1, S, S) and batch["valid"].dtype == torch.bool
    assert batch["mask"].shape == (3, 1, S, S) and batch["mask"].dtype == torch.float32
    assert [tuple(m.shape) for m in batch["masks"]] == [(3, S, S), (2, S, S), (0, S, S)]
    assert batch["has_mask"].tolist() == [True, True, False]
    assert [tuple(b.shape) for b in batch["boxes"]] == [(0, 4)] * 3
    assert batch["visual_prompts"].kind.shape == (3, 0)
    assert batch["task"] == ["gcg", "gcg", "vqa"] and batch["granularity"] == ["pixel", "pixel", "region"]
    assert batch["source"] == ["geopixeld", "geopixeld", "rsvqa_lr"] and batch["modality"].tolist() == [0, 0, 0]
    assert batch["instruction"][2] == "Is there a road?" and batch["response"][2] == "yes"
    assert batch["conversation"][2][0] == {"from": "human", "value": "<image>\nIs there a road?"}
    assert batch["category"][0] == "ship-1; harbor; ship-2" and batch["category"][2] == ""
    assert batch["meta"][0]["id"] == "geopixeld_train_P0001_0_800_0_800"
    assert batch["meta"][0]["original_size"] == [GEO_H, GEO_W] and batch["meta"][2]["qtype"] == "presence"
    # Raw pixels / 255 inside the image; the centre pad is 0 and invalid (40×48 → 27×32: 5 rows above).
    assert torch.allclose(batch["image"][0, :, 10, 10], torch.full((3,), 70 / 255))
    assert not batch["valid"][0, 0, :2].any() and batch["valid"][0, 0, 5 : 32 - 5].all()
    loaded = next(iter(dm.train_dataloader()))
    assert loaded["image"].shape == (3, 3, S, S) and len(loaded["masks"]) == 3


@pytest.mark.parametrize("pad", ["bottom_right", "center"])
def test_resized_masks_equal_resize_pad_of_the_masks(files: dict[str, Path], pad: str) -> None:
    sample = by_id(module([files["geo"]], pad=pad), "train", "geopixeld_train_P0001_0_800_0_800")
    masks = torch.from_numpy(np.stack(expected_masks())).float()
    raw = np.asarray(Image.open(files["geo"].parent / "GeoPixelD/train/P0001_0_800_0_800.png"), dtype=np.float32)
    image = torch.from_numpy(raw).permute(2, 0, 1) / 255
    ref_image, ref_masks, ref_valid, info = resize_pad(image, masks, torch.ones(1, GEO_H, GEO_W, dtype=torch.bool), S)
    h, w = info["resized_size"]
    top, left = ((S - h) // 2, (S - w) // 2) if pad == "center" else (0, 0)
    expected = torch.zeros(3, S, S)
    expected[:, top : top + h, left : left + w] = ref_masks[:, :h, :w]
    assert torch.equal(sample["masks"], expected)
    assert torch.equal(sample["mask"], expected.amax(0, keepdim=True))
    window = (slice(None), slice(top, top + h), slice(left, left + w))
    assert torch.allclose(sample["image"][window], ref_image[:, :h, :w]) and sample["valid"][window].all()
    assert int(sample["valid"].sum()) == int(ref_valid.sum()) and sample["meta"]["resize"]["pad"][:2] == [top, left]


def box_record(folder: Path, size: tuple[int, int], box: list[int]) -> Path:
    """A grounding record whose image is bright exactly on ``box`` (pixels), with the box as its prompt."""
    height, width = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[box[1] : box[3], box[0] : box[2]] = 255
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / "box.png")
    record = InstructRecord(
        id="box",
        images=[str(folder / "box.png")],
        task="region_captioning",
        granularity="region",
        conversations=[Turn("human", "<image>\nPlease give a brief description of <Region 1>."), Turn("gpt", "a roof")],
        source="unit",
        split="train",
        size=[height, width],
        boxes=[[float(v) for v in box]],
        visual_prompts=[{"type": "box", "box": [float(v) for v in box]}],
    )
    return write_records(folder / "box.jsonl", [record])


@pytest.mark.parametrize(
    ("side", "pad", "tolerance"), [(60, "center", 0.0), (60, "bottom_right", 0.0), (47, "center", 1.0)]
)
def test_boxes_move_like_the_image(tmp_path: Path, side: int, pad: str, tolerance: float) -> None:
    path = box_record(tmp_path, (20, 30), [5, 4, 17, 12])
    sample = module([path], image_size=side, pad=pad)
    item = sample.datasets["train"][0]
    rows, cols = np.nonzero(item["image"][0].numpy() > 0.5)  # the bright box after the image's resize and pad
    seen = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)
    assert torch.allclose(item["boxes"][0], seen, atol=tolerance), (item["boxes"][0], seen)
    if tolerance == 0.0:  # scale 2 exactly: the box is known in closed form
        top = 10 if pad == "center" else 0
        assert item["boxes"][0].tolist() == [10.0, 8.0 + top, 34.0, 24.0 + top]
    batch = sample.collate_fn()([item])
    assert torch.equal(batch["visual_prompts"].boxes[0, 0], item["boxes"][0])
    assert batch["visual_prompts"].image_size == (side, side)


def test_train_sampler_draws_groups_in_the_configured_proportions(files: dict[str, Path]) -> None:
    dm = module(
        [files["geo"], files["vqa"], files["dior"]],
        source_options=[SourceOptions(), SourceOptions(), {"multiplier": 2.0}],
        alpha=0.5,
        task_multipliers={"vqa": 3.0},
        epoch_size=20_000,
        seed=3,
    )
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and isinstance(loader.sampler, MixtureSampler)
    # The configured weights, computed here: sizes 2 (gcg), 4 (vqa), 2 and 2 (DIOR grounding, ROC).
    raw = {
        ("geopixeld", "gcg"): 1.0 * 2**0.5,
        ("rsvqa_lr", "vqa"): 3.0 * 4**0.5,
        ("dior_rsvg", "grounding"): 2.0 * 2**0.5,
        ("dior_rsvg", "referring_classification"): 2.0 * 2**0.5,
    }
    total = sum(raw.values())
    items = dm.datasets["train"].items
    order = loader.sampler.order(0)
    counts = dict.fromkeys(raw, 0)
    for index in order:
        record = items[index].record
        counts[(record.source, record.task)] += 1
    for key, weight in raw.items():
        low, high = stats.binom.interval(1 - 1e-6 / (2 * len(raw)), len(order), weight / total)
        assert low <= counts[key] <= high, (key, counts[key], len(order) * weight / total)


def test_text_formatters_get_the_conversation_or_the_last_exchange(files: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from rsvlm.data.spie.corpus import build_demo_tokenizer
    from rsvlm.llm.chat import ChatFormatter

    build_demo_tokenizer(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]}, False)
    formatter = ChatFormatter(tokenizer, max_length=4096)
    first = InstructRecord.from_dict(
        {
            "id": "chat",
            "image": str(files["vqa"].parent / "RSVQA_LR/Images_LR/0.tif"),
            "task": "vqa",
            "granularity": "region",
            "source": "unit",
            "split": "train",
            "conversations": [
                {"from": "human", "value": "<image>\nIs there a road?"},
                {"from": "gpt", "value": "yes"},
                {"from": "human", "value": "Is there water?"},
                {"from": "gpt", "value": "no"},
            ],
        }
    )
    path = write_records(tmp_path / "chat.jsonl", [first])
    dm = module([path, files["vqa"]])
    dm.set_text_formatter(formatter)
    samples = [dm.datasets["train"][0], dm.datasets["train"][1]]
    assert (samples[0]["instruction"], samples[0]["response"]) == ("Is there water?", "no")
    batch = dm.collate_fn()(samples)
    direct = formatter.conversations([s["conversation"] for s in samples])
    for key, value in direct.items():
        assert torch.equal(batch[key], value), key
    single = formatter([samples[1]["instruction"]], [samples[1]["response"]])  # one turn: both paths agree
    n = int(single["attention_mask"].sum())
    assert torch.equal(batch["input_ids"][1, :n], single["input_ids"][0, :n])
    seen: list = []
    dm.set_text_formatter(lambda i, r: seen.append((i, r)) or {"extra": torch.zeros(len(i))})
    assert dm.collate_fn()(samples)["extra"].shape == (2,)
    assert seen == [(["Is there water?", "Is there a road?"], ["no", "yes"])]


def test_options_route_splits_filter_tasks_and_expand_seg(files: dict[str, Path], tmp_path: Path) -> None:
    root = write_rsvqa(tmp_path / "HR", "hr", "test_phili")
    phili = write_records(tmp_path / "phili.jsonl", convert_rsvqa(root, "hr", "test_phili"))
    dm = InstructDataModule([str(phili)], source_options=[{"splits": {"test_phili": "test"}}], image_size=S)
    dm.setup("test")
    assert len(dm.datasets["test"]) == 4 and dm.mixture is None
    dm = module([files["dior"], files["geo"]], source_options=[{"tasks": ["grounding"]}, {}], seg_text="[SEG0][SEG1]")
    assert dm.group_sizes() == {("dior_rsvg", "grounding"): 2, ("geopixeld", "gcg"): 2}
    gcg = by_id(dm, "train", "geopixeld_train_P0002_0_800_0_800")
    assert gcg["response"] == "A <p> ship </p> [SEG0][SEG1] near a <p>pier</p> [SEG0][SEG1]."
    with pytest.warns(UserWarning, match=r"dior\.jsonl: 2 record\(s\) .* center-padded square, but .*'bottom_right'"):
        module([files["dior"]], pad="bottom_right")


def test_errors_are_one_line_and_name_the_file_and_field(files: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    dm = InstructDataModule([str(files["vqa"]), str(missing)])
    with pytest.raises(FileNotFoundError) as caught:
        dm.setup("fit")
    message = str(caught.value)
    assert message == f"InstructDataModule.sources[1]: instruction records file not found: {missing}"
    assert "\n" not in message
    empty = write_records(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match=r"InstructDataModule: no train records in .*empty\.jsonl"):
        InstructDataModule([str(empty)]).setup("fit")
    with pytest.raises(ValueError, match=r"InstructDataModule\.source_options: 1 entries for 2 sources"):
        InstructDataModule(["a", "b"], source_options=[SourceOptions()])
    with pytest.raises(ValueError, match=r"InstructDataModule\.source_options\[0\]\.splits: maps to \['dev'\]"):
        InstructDataModule(["a"], source_options=[{"splits": {"val": "dev"}}])
    with pytest.raises(ValueError, match=r"InstructDataModule\.pad: must be one of center, bottom_right"):
        InstructDataModule(["a"], pad="top")
    with pytest.raises(ValueError, match=r"InstructDataModule\.mean: 2 values for 3 channels"):
        InstructDataModule(["a"], mean=[0.5, 0.5])
    conflict = [{"multiplier": 1.0}, {"multiplier": 2.0}]
    with pytest.raises(ValueError, match=r"group \('rsvqa_lr', 'vqa'\) has multiplier 1\.0 in .*vqa\.jsonl and 2\.0"):
        InstructDataModule([str(files["vqa"])] * 2, source_options=conflict).setup("fit")
    (tmp_path / "RSVQA_LR").mkdir()
    write_rsvqa(tmp_path / "RSVQA_LR")
    records = convert_rsvqa(tmp_path / "RSVQA_LR", "lr", "train")
    path = write_records(tmp_path / "gone.jsonl", records)
    (tmp_path / "RSVQA_LR" / "Images_LR" / "2.tif").unlink()
    dm = module([path], check_files=False)
    with pytest.raises(InstructRecordError, match=r"gone\.jsonl: record 'rsvqa_lr_train_4': field 'image': .*2\.tif"):
        dm.datasets["train"][2]

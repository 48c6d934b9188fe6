"""Per-task scores: mask tasks by their targets, answer tasks by the generated text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsvlm.models.task_scoring import build_task_metrics, update_task_metrics

TASKS = ["referring_segmentation", "vqa", "land_cover"]
KINDS = {"referring_segmentation": "referring", "vqa": "answer"}


def mixed_batch():
    g = torch.Generator().manual_seed(0)
    masks = [(torch.rand(2, 8, 8, generator=g) > 0.5).float(), torch.zeros(0, 8, 8), torch.zeros(0, 8, 8)]
    return {
        "image": torch.zeros(3, 3, 8, 8),
        "task": ["referring_segmentation", "vqa", "vqa"],
        "response": ["Sure, [SEG0][SEG1].", "Yes.", "no"],
        "masks": masks,
        "valid": torch.ones(3, 1, 8, 8, dtype=torch.bool),
    }


def test_each_task_is_scored_by_its_own_metric():
    metrics = build_task_metrics(TASKS, KINDS, "global")["test"]
    batch = mixed_batch()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    decoded = {
        "mask_logits": logits,
        "target_masks": torch.cat(batch["masks"])[:, None],
        "scored_index": torch.tensor([0, 0]),
        "texts": ["whatever", "yes", "No."],
    }
    update_task_metrics(metrics, TASKS, decoded, batch)
    # referring segmentation, written out with numpy
    pred, ref = (logits[:, 0] > 0).numpy(), batch["masks"][0].numpy() > 0.5
    ious = [(p & r).sum() / (p | r).sum() for p, r in zip(pred, ref, strict=True)]
    got = metrics["referring_segmentation"].compute()
    assert np.isclose(float(got["mIoU"]), np.mean(ious))
    assert np.isclose(float(got["oIoU"]), (pred & ref).sum() / (pred | ref).sum())
    assert np.isclose(float(got["P@0.5"]), np.mean([i >= 0.5 for i in ious]))
    # VQA: "yes" and "Yes.", "No." and "no" are equal after normalisation
    assert float(metrics["vqa"].compute()["accuracy"]) == 1.0
    assert not metrics["land_cover"].update_called


def test_a_teacher_forced_pass_leaves_answer_tasks_unscored():
    metrics = build_task_metrics(TASKS, KINDS, "global")["val_teacher_forced"]
    batch = mixed_batch()
    decoded = {
        "mask_logits": torch.zeros(2, 1, 8, 8),
        "target_masks": torch.cat(batch["masks"])[:, None],
        "scored_index": torch.tensor([0, 0]),
    }
    update_task_metrics(metrics, TASKS, decoded, batch)
    assert metrics["referring_segmentation"].update_called and not metrics["vqa"].update_called


def test_unknown_tasks_and_kinds_are_named():
    with pytest.raises(KeyError, match="roads"):
        build_task_metrics(TASKS, {"roads": "answer"}, "global")
    with pytest.raises(ValueError, match="unknown metric kind"):
        build_task_metrics(TASKS, {"vqa": "bleu"}, "global")
    metrics = build_task_metrics(TASKS, KINDS, "global")["val"]
    with pytest.raises(KeyError, match="'roads'"):
        update_task_metrics(
            metrics, TASKS, {"mask_logits": torch.zeros(1, 1, 8, 8)}, {"task": ["roads"], "image": torch.zeros(1)}
        )


def test_a_routing_classifier_is_scored_against_the_gold_granularity():
    """MagCrop's classifier accuracy over a split equals scikit-learn's on the same predictions."""
    from catalogue import tiny_granularity_classifier
    from sklearn.metrics import accuracy_score

    from rsvlm.crops.magcrop import MagCrop
    from rsvlm.models.task_scoring import ROUTING, log_task_metrics, routing_labels, update_routing_metric

    torch.manual_seed(5)
    cropper = MagCrop(boxes="given", classifier=tiny_granularity_classifier().eval(), route="classifier").eval()
    metrics = build_task_metrics(["vqa"], {"vqa": "answer"}, "global", routing_labels(cropper))
    batches = [
        {"instruction": ["What is this scene?", "Is there a ship?"], "granularity": ["image", "region"]},
        {"instruction": ["Segment the small boat by the pier.", "Where is the red car?"], "granularity": [2, "region"]},
    ]
    predicted, gold = [], []
    for batch in batches:
        update_routing_metric(metrics["test"], cropper, batch)
        predicted += cropper.routing(batch)
        gold += [g if isinstance(g, str) else ["image", "region", "pixel"][g] for g in batch["granularity"]]
    update_routing_metric(metrics["test"], cropper, {"instruction": ["no gold label"]})  # skipped

    logged = {}

    class Logger:
        def log_dict(self, values):
            logged.update({k: float(v) for k, v in values.items()})

    log_task_metrics(Logger(), metrics["test"], "test", ["vqa"])
    assert logged == pytest.approx({f"test/{ROUTING}/accuracy": accuracy_score(gold, predicted)})
    assert ROUTING not in build_task_metrics(["vqa"], {"vqa": "answer"}, "global")["test"]


# ---------------------------------------------------------------- grounding, baselines and groups
SIDE = 16
ORIGINAL = (100, 200)  # (H, W): integer pixel boxes are exact at 3 decimals on its 200-px square
GROUP_TASKS = ["refer", "cls", "seg", "ground", "caption"]
GROUP_KINDS = {"refer": "referring", "cls": "answer", "ground": "grounding", "caption": "none"}
GROUPS = {"modality": None, "prompt_kind": None, "source": ["a", "b.v2"]}


def square_info(pad: str = "center") -> dict:
    """The resize info :class:`~rsvlm.data.multitask.dataset.InstructDataset` keeps for an ORIGINAL image."""
    from rsvlm.data.multitask.geometry import resize_pad_square

    image, valid = torch.zeros(1, *ORIGINAL), torch.ones(1, *ORIGINAL, dtype=torch.bool)
    return resize_pad_square(image, None, valid, SIDE, pad)[3]


def record_boxes(g: torch.Generator, n: int) -> torch.Tensor:
    """``n×4`` integer pixel boxes on the ORIGINAL image."""
    x0 = torch.randint(0, 120, (n, 1), generator=g)
    y0 = torch.randint(0, 50, (n, 1), generator=g)
    w, h = torch.randint(20, 80, (n, 1), generator=g), torch.randint(15, 50, (n, 1), generator=g)
    return torch.cat([x0, y0, x0 + w, y0 + h], dim=1).double()


@pytest.mark.parametrize(("convention", "pad"), [("center", "center"), ("bottom_right", "center"), ("pixel", "center")])
def test_answer_boxes_are_read_onto_the_square_the_reference_boxes_are_on(convention, pad):
    """A box written by the record's convention reads back as the dataset's reference box on the square,
    whatever the dataset's own pad; without meta the text is read on the model's square."""
    from rsvlm.data.coords import format_grounding
    from rsvlm.data.multitask.geometry import move_boxes
    from rsvlm.models.task_scoring import answer_boxes, image_extent

    info = square_info(pad)
    boxes = record_boxes(torch.Generator().manual_seed(2), 3)
    if convention == "pixel":
        text = "<p>ship</p>[" + ";".join(",".join(f"{v:g}" for v in b) for b in boxes.tolist()) + "]"
    else:
        text = "There: " + format_grounding("ship", boxes.tolist(), ORIGINAL, convention) + "."
    got = answer_boxes(text, {"resize": info, "coord_convention": convention}, SIDE)
    assert torch.allclose(torch.tensor(got, dtype=torch.float64), move_boxes(boxes, info), atol=1e-9)
    assert answer_boxes("[0.25,0.5,0.75,1.0] and no more", None, SIDE) == [[4.0, 8.0, 12.0, 16.0]]
    assert answer_boxes("no box here", {"resize": info, "coord_convention": convention}, SIDE) == []
    assert image_extent({"resize": info}, SIDE) == [0.0, 4.0, 16.0, 12.0]  # 8 rows of image, centred
    assert image_extent(None, SIDE) == [0.0, 0.0, 16.0, 16.0]


def group_batch(seed: int = 0, size: int = 24) -> tuple[dict, dict]:
    """A mixed batch of every metric kind (several modalities, prompt kinds and sources) and its decoded
    output: referring / binary targets with mask rows, answers and grounding texts."""
    from rsvlm.contracts import VisualPromptBatch
    from rsvlm.data.coords import format_grounding
    from rsvlm.data.multitask.geometry import move_boxes

    g = torch.Generator().manual_seed(seed)
    info = square_info()
    tasks = [GROUP_TASKS[i % len(GROUP_TASKS)] for i in range(size)]
    masks, boxes, texts, responses, rows = [], [], [], [], []
    words = ["airport", "forest", "beach"]
    for i, task in enumerate(tasks):
        targets = int(torch.randint(1, 3, (), generator=g)) if task in ("refer", "seg", "ground") else 0
        masks.append((torch.rand(targets if task != "ground" else 0, SIDE, SIDE, generator=g) > 0.6).float())
        rows += [i] * len(masks[-1])
        record = record_boxes(g, targets if task == "ground" else 0)
        boxes.append(move_boxes(record, info).float())
        if task == "ground":
            jitter = record + torch.randint(-8, 9, record.shape, generator=g)
            jitter = torch.minimum(jitter.clamp_min(0), torch.tensor([200.0, 100.0, 200.0, 100.0]))
            jitter[:, 2:] = torch.maximum(jitter[:, 2:], jitter[:, :2] + 1)
            written = jitter[: targets - int(i % 3 == 0)]  # some boxes left unwritten: misses
            texts.append(format_grounding("it", written.tolist(), ORIGINAL, "center") if len(written) else "none")
            responses.append(format_grounding("it", record.tolist(), ORIGINAL, "center"))
        else:
            texts.append(words[int(torch.randint(0, 3, (), generator=g))])
            responses.append(words[int(torch.randint(0, 3, (), generator=g))])
    corner = torch.rand(size, 1, 2, generator=g) * 10
    prompts = VisualPromptBatch(
        kind=torch.randint(0, 4, (size, 1), generator=g),
        points=torch.zeros(size, 1, 1, 2),
        npoints=torch.zeros(size, 1, dtype=torch.long),
        boxes=torch.cat([corner, corner + 1 + torch.rand(size, 1, 2, generator=g) * 6], dim=-1),
        labels=torch.ones(size, 1, dtype=torch.long),
        image_size=(SIDE, SIDE),
    )
    batch = {
        "image": torch.zeros(size, 3, SIDE, SIDE),
        "valid": torch.rand(size, 1, SIDE, SIDE, generator=g) > 0.1,
        "task": tasks,
        "source": [["a", "b.v2", "c"][int(torch.randint(0, 3, (), generator=g))] for _ in tasks],
        "modality": torch.randint(0, 3, (size,), generator=g),
        "visual_prompts": prompts,
        "masks": masks,
        "boxes": boxes,
        "response": responses,
        "meta": [{"resize": info, "coord_convention": "center"} for _ in tasks],
    }
    decoded = {
        "mask_logits": torch.randn(len(rows), 1, SIDE, SIDE, generator=g),
        "target_masks": torch.cat(masks)[:, None],
        "scored_index": torch.tensor(rows),
        "texts": texts,
    }
    return batch, decoded


def subset(batch: dict, decoded: dict, samples: list[int]) -> tuple[dict, dict]:
    """The batch and decoded output of ``samples`` alone."""
    from dataclasses import replace

    index = torch.tensor(samples, dtype=torch.long)
    vp = batch["visual_prompts"]
    lists = {k: v for k, v in batch.items() if k != "visual_prompts"}
    out = {k: v[index] if isinstance(v, torch.Tensor) else [v[i] for i in samples] for k, v in lists.items()}
    out["visual_prompts"] = replace(
        vp, **{k: getattr(vp, k)[index] for k in ("kind", "points", "npoints", "boxes", "labels")}
    )
    rows = [r for r, s in enumerate(decoded["scored_index"].tolist()) if s in samples]
    keep = torch.tensor(rows, dtype=torch.long)
    scored = {
        "mask_logits": decoded["mask_logits"][keep],
        "target_masks": decoded["target_masks"][keep],
        "scored_index": torch.tensor([samples.index(int(s)) for s in decoded["scored_index"][keep]], dtype=torch.long),
        "texts": [decoded["texts"][i] for i in samples],
    }
    return out, scored


def values_of(metric) -> dict[str, float]:
    return {k: float(v) for k, v in metric.compute().items()}


def test_each_group_scores_as_the_task_metric_on_the_group_samples_alone():
    """Referring, answer, binary and grounding tasks per modality, prompt kind and source: each copy
    equals a fresh metric of the task updated with that group's samples only (a sub-batch)."""
    from rsvlm.models.metric_groups import sample_values
    from rsvlm.models.task_scoring import GROUPED

    batches = [group_batch(0), group_batch(1, size=15)]
    metrics = build_task_metrics(GROUP_TASKS, GROUP_KINDS, "global", groups=GROUPS)["test"]
    for batch, decoded in batches:
        update_task_metrics(metrics, GROUP_TASKS, decoded, batch)
    grouped = metrics[GROUPED]
    assert {t for t, _, _ in grouped.labels} == {"refer", "cls", "seg", "ground"}  # "none" is not scored
    checked = set()
    for key, (task, field, value) in zip(grouped.keys(), grouped.labels):
        fresh = build_task_metrics(GROUP_TASKS, GROUP_KINDS, "global")["test"]
        for batch, decoded in batches:
            values = sample_values(batch, field, len(batch["task"]))
            samples = [i for i, (t, v) in enumerate(zip(batch["task"], values)) if t == task and v == value]
            if samples:
                update_task_metrics(fresh, GROUP_TASKS, *reversed(subset(batch, decoded, samples)))
        if not fresh[task].update_called:
            assert not grouped[key].update_called, (task, field, value)
            continue
        assert values_of(grouped[key]) == pytest.approx(values_of(fresh[task])), (task, field, value)
        checked.add((task, field))
    assert checked == {(t, f) for t in ("refer", "cls", "seg", "ground") for f in GROUPS}
    # the overall metrics are those of an ungrouped model
    plain = build_task_metrics(GROUP_TASKS, GROUP_KINDS, "global")["test"]
    for batch, decoded in batches:
        update_task_metrics(plain, GROUP_TASKS, decoded, batch)
    for task in ("refer", "cls", "seg", "ground"):
        assert values_of(metrics[task]) == pytest.approx(values_of(plain[task]))


def test_grounding_and_the_baselines_against_brute_force():
    """Acc@0.5 of the written boxes (a box left unwritten is a miss) and the centre box against
    torchvision's IoU; the prompt box as the mask against a numpy fill; the majority answer by counting."""
    from collections import Counter

    from torchvision.ops import box_iou

    from rsvlm.data.multitask.geometry import move_boxes
    from rsvlm.training.metrics.text import normalize_answer

    batch, decoded = group_batch(0)
    metrics = build_task_metrics(GROUP_TASKS, GROUP_KINDS, "global")["test"]
    update_task_metrics(metrics, GROUP_TASKS, decoded, batch)
    info = batch["meta"][0]["resize"]
    predicted, target = [], []
    for i, task in enumerate(batch["task"]):
        if task != "ground":
            continue
        written = [
            [float(v) for v in b.split(",")] for b in decoded["texts"][i].partition("[")[2].rstrip("]").split(";") if b
        ]
        moved = move_boxes(
            torch.tensor(written, dtype=torch.float64).reshape(-1, 4) * 200 - torch.tensor([0, 50, 0, 50]), info
        )
        for k, ref in enumerate(batch["boxes"][i]):
            predicted.append(moved[k] if k < len(moved) else torch.zeros(4, dtype=torch.float64))
            target.append(ref.double())
    predicted, target = torch.stack(predicted), torch.stack(target)
    ious = box_iou(predicted, target).diagonal().nan_to_num(0.0)
    centre = torch.tensor([[4.0, 6.0, 12.0, 10.0]], dtype=torch.float64)  # the image is rows 4–12 of the square
    centre_ious = box_iou(centre, target)[0]
    got = values_of(metrics["ground"])
    assert got["Acc@0.5"] == pytest.approx(float((ious >= 0.5).double().mean()))
    assert got["mIoU"] == pytest.approx(float(ious.mean()))
    assert got["Acc@0.5_centre_box"] == pytest.approx(float((centre_ious >= 0.5).double().mean()))
    assert got["mIoU_centre_box"] == pytest.approx(float(centre_ious.mean()))
    assert 0 < got["Acc@0.5"] < 1 and got["mIoU_centre_box"] > 0

    # the prompt box as the mask: pixels whose centres lie in slot 0's box, empty without a prompt
    vp, ious = batch["visual_prompts"], []
    centres = np.arange(SIDE) + 0.5
    for row, sample in enumerate(decoded["scored_index"].tolist()):
        if batch["task"][sample] != "refer":
            continue
        x0, y0, x1, y1 = vp.boxes[sample, 0].double().tolist()
        box = ((centres >= y0) & (centres <= y1))[:, None] & ((centres >= x0) & (centres <= x1))[None, :]
        box &= int(vp.kind[sample, 0]) > 0
        ref = decoded["target_masks"][row, 0].numpy() > 0.5
        union = (box | ref).sum()
        ious.append((box & ref).sum() / union if union else 0.0)
    assert values_of(metrics["refer"])["mIoU_prompt_box"] == pytest.approx(np.mean(ious))

    answers = [normalize_answer(r) for r, t in zip(batch["response"], batch["task"]) if t == "cls"]
    assert values_of(metrics["cls"])["accuracy_majority"] == pytest.approx(
        max(Counter(answers).values()) / len(answers)
    )


def test_grounding_by_segmenting_reads_the_box_of_each_decoded_mask():
    """A text that writes no box ("<p>it</p> [SEG]") is scored with its decoded masks' boxes, in order:
    pixel edges around the largest 8-connected region (skimage's label and regionprops as the
    reference); an empty mask, or a second reference with no second mask, is a miss."""
    from skimage.measure import label, regionprops
    from torchvision.ops import box_iou

    g = torch.Generator().manual_seed(3)
    masks = torch.zeros(3, 1, SIDE, SIDE)
    masks[0, 0, 2:7, 3:11] = 1
    masks[1, 0, 9:15, 0:4] = 1
    masks[1, 0, 12, 6] = 1  # a stray pixel apart from the region: not in the box
    masks[1, 0, 15, 4] = 1  # touches the region at a corner (8-connected): in the box
    logits = torch.where(masks > 0, 5.0, -5.0) + torch.rand(3, 1, SIDE, SIDE, generator=g)  # row 2: empty
    boxes = [
        torch.tensor([[3.0, 2.0, 11.0, 7.0]]),
        torch.tensor([[0.0, 9.0, 5.0, 15.0], [1.0, 1.0, 4.0, 4.0]]),
        torch.tensor([[1.0, 1.0, 6.0, 6.0]]),
    ]
    batch = {"image": torch.zeros(3, 3, SIDE, SIDE), "task": ["ground"] * 3, "boxes": boxes}
    decoded = {"texts": ["<p>it</p> [SEG]"] * 3, "target_logits": logits, "target_index": torch.tensor([0, 1, 2])}
    metrics = build_task_metrics(["ground"], {"ground": "grounding"}, "global")["test"]
    update_task_metrics(metrics, ["ground"], decoded, batch)
    predicted = []
    for row in range(3):
        regions = regionprops(label(masks[row, 0].numpy() > 0, connectivity=2))
        if not regions:
            predicted.append([0.0] * 4)
            continue
        y0, x0, y1, x1 = max(regions, key=lambda r: r.area).bbox  # ends exclusive
        predicted.append([x0, y0, x1, y1])
    predicted.insert(2, [0.0] * 4)  # sample 1's second reference: no second mask
    target = torch.cat(boxes).double()
    ious = box_iou(torch.tensor(predicted, dtype=torch.float64), target).diagonal().nan_to_num(0.0)
    got = values_of(metrics["ground"])
    assert got["mIoU"] == pytest.approx(float(ious.mean()))
    assert got["Acc@0.5"] == pytest.approx(float((ious >= 0.5).double().mean())) == 0.5
    assert predicted[1] == [0, 9, 5, 16]


def test_groups_log_by_name_and_are_checked():
    from rsvlm.models.metric_groups import check_groups
    from rsvlm.models.task_scoring import log_task_metrics

    batch, decoded = group_batch(0)
    metrics = build_task_metrics(GROUP_TASKS, GROUP_KINDS, "global", groups={"modality": ["sar", "optical"]})["val"]
    update_task_metrics(metrics, GROUP_TASKS, decoded, batch)
    logged = {}

    class Logger:
        def log_dict(self, values):
            logged.update({k: float(v) for k, v in values.items()})

    log_task_metrics(Logger(), metrics, "val", GROUP_TASKS)
    assert logged["val/mIoU"] == pytest.approx(values_of(build_and_score("refer", batch, decoded))["mIoU"])
    names = {0: "optical", 1: "sar"}
    present = {(t, names[m]) for t, m in zip(batch["task"], batch["modality"].tolist()) if m in names}
    present -= {("caption", "optical"), ("caption", "sar")}
    assert {k.rsplit("/", 1)[0] for k in logged if "=" in k} == {f"val/{t}/modality={v}" for t, v in present}
    assert len(present) >= 6 and {"val/refer/modality=sar/mIoU_prompt_box", "val/cls/modality=sar/S-IoU"} <= set(logged)
    assert {"val/ground/modality=sar/Acc@0.5_centre_box", "val/seg/modality=sar/F1"} <= set(logged)
    assert check_groups(["modality", "prompt_kind"]) == {
        "modality": ["optical", "sar", "infrared"],
        "prompt_kind": ["point", "box", "scribble", "mask"],
    }
    with pytest.raises(ValueError, match="list the values of 'source'"):
        check_groups({"source": None})
    with pytest.raises(ValueError, match="no value"):
        check_groups({"modality": ["radar"]})
    with pytest.raises(KeyError, match="'granularity'"):
        update_task_metrics(
            build_task_metrics(GROUP_TASKS, GROUP_KINDS, "global", groups={"granularity": ["image"]})["val"],
            GROUP_TASKS,
            decoded,
            batch,
        )


def build_and_score(task: str, batch: dict, decoded: dict):
    metrics = build_task_metrics(GROUP_TASKS, GROUP_KINDS, "global")["val"]
    update_task_metrics(metrics, GROUP_TASKS, decoded, batch)
    return metrics[task]


def test_the_model_builds_its_groups_up_front():
    from conftest import tiny_spex_components

    from rsvlm.models.task_scoring import GROUPED
    from rsvlm.models.vlm import VisionLanguageModel

    model = VisionLanguageModel(
        **tiny_spex_components(),
        tasks=["refer", "cls"],
        task_metrics={"refer": "referring", "cls": "answer"},
        metric_groups={"modality": ["optical", "sar"], "source": ["dior_rsvg"]},
    )
    for split in ("val", "val_teacher_forced", "test", "test_teacher_forced"):
        names = [name for name, _ in model.metrics[split][GROUPED].named_groups()]
        assert names == [
            f"{t}/{g}" for t in ("refer", "cls") for g in ("modality=optical", "modality=sar", "source=dior_rsvg")
        ]
    assert GROUPED not in VisionLanguageModel(**tiny_spex_components()).metrics["val"]

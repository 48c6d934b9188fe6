"""GeoMag / EarthGPT-X task metrics against brute-force versions written here, torchvision-free
box IoU by hand, and hand-computed BLEU-1 / ROUGE-L for small cases."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from rsvlm.training.metrics.captions import caption_scores
from rsvlm.training.metrics.gcg import GroundedImage, gcg_scores, greedy_pairs, iou_matrix
from rsvlm.training.metrics.grounding import GroundingAccuracy
from rsvlm.training.metrics.referring import ReferringSegmentationMetrics
from rsvlm.training.metrics.text import normalize_answer, semantic_iou, semantic_similarity, vqa_accuracy


def test_referring_segmentation_matches_the_protocol_by_hand():
    rng = np.random.default_rng(0)
    preds = [rng.random((12, 10)) > 0.5 for _ in range(6)] + [np.zeros((5, 5), bool)]
    refs = [rng.random((12, 10)) > 0.4 for _ in range(6)] + [np.zeros((5, 5), bool)]
    metric = ReferringSegmentationMetrics()
    metric.update([torch.from_numpy(p) for p in preds[:4]], [torch.from_numpy(g) for g in refs[:4]])
    metric.update([torch.from_numpy(p) for p in preds[4:]], [torch.from_numpy(g) for g in refs[4:]])
    got = metric.compute()
    inter = [np.logical_and(p, g).sum() for p, g in zip(preds, refs)]
    union = [np.logical_or(p, g).sum() for p, g in zip(preds, refs)]
    ious = [i / u if u else 0.0 for i, u in zip(inter, union)]
    assert float(got["oIoU"]) == pytest.approx(sum(inter) / sum(union))
    assert float(got["mIoU"]) == pytest.approx(np.mean(ious))
    for k in (0.5, 0.6, 0.7, 0.8, 0.9):
        assert float(got[f"P@{k:g}"]) == pytest.approx(np.mean([iou >= k for iou in ious]))
    # the floors: a full mask's IoU is the reference's share of the image; an empty mask's is 0
    assert float(got["mIoU_full_mask"]) == pytest.approx(np.mean([g.mean() for g in refs]))
    assert float(got["mIoU_empty_mask"]) == 0.0
    lisa = ReferringSegmentationMetrics(empty_pair=1.0)
    lisa.update([torch.zeros(3, 3)], [torch.zeros(3, 3, dtype=torch.bool)])  # logits ≤ 0: empty
    assert float(lisa.compute()["mIoU"]) == 1.0
    assert float(lisa.compute()["mIoU_empty_mask"]) == 1.0  # an empty reference: the empty mask is right


def test_grounding_accuracy_with_iou_by_hand():
    predicted = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 0, 0]], dtype=torch.float)
    target = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 10, 10], [0, 0, 4, 4]], dtype=torch.float)

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union else 0.0

    by_hand = [iou(p.tolist(), t.tolist()) for p, t in zip(predicted, target)]
    metric = GroundingAccuracy()
    metric.update(predicted, target)
    got = metric.compute()
    assert float(got["Acc@0.5"]) == pytest.approx(np.mean([v >= 0.5 for v in by_hand])) == 0.5
    assert float(got["mIoU"]) == pytest.approx(np.mean(by_hand))


def test_vqa_accuracy_per_type_and_the_mean_of_the_types():
    preds = ["Yes.", "no", " yes", "more", "no"]
    refs = ["yes", "yes", "yes", "more", "less"]
    types = ["presence", "presence", "presence", "comparison", "comparison"]
    got = vqa_accuracy(preds, refs, types)
    assert got == {"presence": 2 / 3, "comparison": 1 / 2, "A": (2 / 3 + 1 / 2) / 2}
    assert normalize_answer(" Yes. ") == "yes"


def test_semantic_iou_and_similarity():
    assert semantic_iou(["Category: storage tank."], ["storage_tank"]) == 1.0  # Osprey: '_' only of the reference
    assert semantic_iou(["a big ship"], ["ship (vessel)"]) == pytest.approx(1 / 4)

    def letters(texts):  # a toy sentence embedder: letter counts
        return torch.tensor([[t.count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts], dtype=torch.float)

    a, b = ["ship", "airport"], ["ships", "harbor"]
    want = np.mean(
        [
            float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y))
            for x, y in zip(letters(a).numpy(), letters(b).numpy())
        ]
    )
    assert semantic_similarity(a, b, letters) == pytest.approx(want)


def test_caption_scores_against_hand_computed_bleu1_and_rouge_l():
    preds = {"1": "a plane on the runway"}
    refs = {"1": ["a plane is on the runway near the terminal"]}
    got = caption_scores(preds, refs, tokenize=False)
    # BLEU-1: clipped unigram precision 5/5 × brevity penalty exp(1 − 9/5)
    assert got["Bleu_1"] == pytest.approx(np.exp(1 - 9 / 5), rel=1e-6)
    # ROUGE-L: LCS 5, P = 5/5, R = 5/9, F = (1 + β²)PR / (R + β²P) with β = 1.2
    p, r, beta = 1.0, 5 / 9, 1.2
    assert got["ROUGE_L"] == pytest.approx((1 + beta**2) * p * r / (r + beta**2 * p), rel=1e-6)
    same = caption_scores({"1": refs["1"][0], "2": "two ships"}, {"1": refs["1"], "2": ["two ships"]}, tokenize=False)
    assert same["Bleu_1"] == pytest.approx(1.0, rel=1e-6) and same["ROUGE_L"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="different images"):
        caption_scores({"1": "x"}, {"2": ["x"]})


@pytest.mark.skipif(
    shutil.which("java") is None, reason="METEOR and the PTB tokenizer need java (apt install default-jre-headless)"
)
def test_meteor_and_ptb_tokenizer_run_with_java():
    got = caption_scores({"1": "A plane, on the runway."}, {"1": ["a plane on the runway"]})
    assert got["Bleu_1"] == pytest.approx(1.0, rel=1e-6) and 0.9 < got["METEOR"] <= 1.0


def test_gcg_greedy_miou_recall_and_ap50():
    square = np.zeros((20, 20), bool)
    square[2:10, 2:10] = True
    other = np.zeros((20, 20), bool)
    other[12:18, 12:18] = True
    half = np.zeros((20, 20), bool)
    half[2:10, 2:6] = True
    perfect = GroundedImage([square, other], ["court", "pool"], [square, other], ["court", "pool"])
    partial = GroundedImage([half], ["court"], [square, other], ["court", "pool"])
    got = gcg_scores([perfect, partial], text_similarity=lambda a, b: float(a == b))
    assert got["mIoU"] == pytest.approx((1.0 + 0.5) / 2)  # the half square pairs with IoU 0.5
    assert got["recall"] == pytest.approx(3 / 4)  # IoU 0.5 and same phrase count; the pool is missed
    assert got["AP50"] == pytest.approx(gcg_scores([perfect, partial])["AP50"])
    assert gcg_scores([perfect])["AP50"] == pytest.approx(1.0)
    ious = iou_matrix([square, half], [half, square])
    assert greedy_pairs(ious) == [(0, 1), (1, 0)]


def test_grounding_accuracy_and_its_centre_box_baseline_against_torchvision():
    """Acc@0.5 / mIoU of the pairs and of the centre box (half the image's width and height, centred in
    the image's extent), against ``torchvision.ops.box_iou`` run here."""
    from torchvision.ops import box_iou

    g = torch.Generator().manual_seed(3)
    corner = torch.rand(40, 2, generator=g) * 50
    target = torch.cat([corner, corner + 5 + torch.rand(40, 2, generator=g) * 40], dim=1)
    predicted = target + torch.randn(40, 4, generator=g) * 6
    predicted[:, 2:] = torch.maximum(predicted[:, 2:], predicted[:, :2])
    extent = torch.tensor([[0.0, 10.0, 100.0, 90.0]] * 20 + [[20.0, 0.0, 80.0, 100.0]] * 20)
    metric = GroundingAccuracy()
    metric.update(predicted[:25], target[:25], extent[:25])
    metric.update(predicted[25:], target[25:], extent[25:])
    got = metric.compute()
    ious = box_iou(predicted.double(), target.double()).diagonal()
    width, height = extent[:, 2] - extent[:, 0], extent[:, 3] - extent[:, 1]
    cx, cy = (extent[:, 0] + extent[:, 2]) / 2, (extent[:, 1] + extent[:, 3]) / 2
    centre = torch.stack([cx - width / 4, cy - height / 4, cx + width / 4, cy + height / 4], dim=1)
    centre_ious = box_iou(centre.double(), target.double()).diagonal()
    assert 0 < float((ious >= 0.5).double().mean()) < 1 and 0 < float((centre_ious >= 0.5).double().mean()) < 1
    assert float(got["Acc@0.5"]) == pytest.approx(float((ious >= 0.5).double().mean()))
    assert float(got["mIoU"]) == pytest.approx(float(ious.mean()))
    assert float(got["Acc@0.5_centre_box"]) == pytest.approx(float((centre_ious >= 0.5).double().mean()))
    assert float(got["mIoU_centre_box"]) == pytest.approx(float(centre_ious.mean()))
    bare = GroundingAccuracy()
    bare.update(predicted, target)  # no image extents: no baseline
    assert set(bare.compute()) == {"Acc@0.5", "mIoU"}


def test_referring_prompt_box_baseline_by_hand():
    """``mIoU_prompt_box``: the given baseline masks scored like the predictions, over the same samples
    (a sample without one as an empty prediction); absent when no sample had one."""
    rng = np.random.default_rng(4)
    refs = [rng.random((9, 11)) > 0.6 for _ in range(5)] + [np.zeros((9, 11), bool)]
    boxes = [rng.random((9, 11)) > 0.5 for _ in range(6)]
    given = [0, 2, 3, 5]
    metric = ReferringSegmentationMetrics(thresholds=(0.5,))
    prompts = [torch.from_numpy(boxes[i]) if i in given else None for i in range(6)]
    preds = [torch.from_numpy(rng.random((9, 11)) > 0.5) for _ in range(6)]
    metric.update(preds[:3], [torch.from_numpy(r) for r in refs[:3]], prompts[:3])
    metric.update(preds[3:], [torch.from_numpy(r) for r in refs[3:]], prompts[3:])

    def iou(p, g):
        union = np.logical_or(p, g).sum()
        return np.logical_and(p, g).sum() / union if union else 0.0

    want = np.mean([iou(boxes[i] if i in given else np.zeros_like(refs[i]), refs[i]) for i in range(6)])
    assert float(metric.compute()["mIoU_prompt_box"]) == pytest.approx(want)
    bare = ReferringSegmentationMetrics()
    bare.update(preds, [torch.from_numpy(r) for r in refs])
    assert "mIoU_prompt_box" not in bare.compute()
    with pytest.raises(ValueError, match="prompt masks"):
        bare.update(preds, [torch.from_numpy(r) for r in refs], prompts[:2])


def test_answer_accuracy_majority_baseline_by_hand():
    """``accuracy_majority``: the share of references equal (after normalisation) to the most frequent one."""
    from collections import Counter

    from rsvlm.training.metrics.answers import AnswerAccuracy

    refs = ["Airport", "airport.", "forest", "beach", "Forest", "airport", "river", "beach"]
    preds = ["airport", "forest", "forest", "x", "y", "airport", "z", "beach"]
    metric = AnswerAccuracy()
    metric.update(preds[:5], refs[:5])
    metric.update([], [])
    metric.update(preds[5:], refs[5:])
    got = metric.compute()
    counts = Counter(normalize_answer(r) for r in refs)
    assert float(got["accuracy_majority"]) == pytest.approx(max(counts.values()) / len(refs)) == 3 / 8
    assert float(got["accuracy_majority"]) >= 1 / len(counts)  # at least chance
    assert float(got["accuracy"]) == pytest.approx(
        np.mean([normalize_answer(p) == normalize_answer(r) for p, r in zip(preds, refs)])
    )
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert float(metric.compute()["accuracy_majority"]) == 0.0

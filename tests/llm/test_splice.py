"""splice_visual_tokens against sequences built by hand, sample by sample."""

from __future__ import annotations

import pytest
import torch

from rsvlm.llm.splice import IGNORE_INDEX, splice_placeholders, splice_visual_tokens

IMG = 7
PAD = 0


def batch(rows: list[list[int]], left: bool = False):
    """Pad id rows; labels = id+100 on ids > 20 (a stand-in for response tokens), else -100."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    labels = torch.where(ids > 20, ids + 100, torch.full_like(ids, IGNORE_INDEX))
    return ids, mask, labels, ids > 20


@pytest.mark.parametrize("left", [False, True])
def test_splice_matches_hand_built_sequences(left: bool) -> None:
    torch.manual_seed(0)
    rows = [[1, 2, IMG, 3, 21, 22], [IMG, 4, 23], [5, 6, 8, 9, IMG, 24, 25, 26]]
    ids, mask, labels, resp = batch(rows, left)
    d, n = 4, 3
    table = torch.randn(30, d)
    embeds = table[ids]
    visual = torch.randn(len(rows), n, d)
    out = splice_visual_tokens(embeds, ids, IMG, visual, mask, labels, resp)
    width = ids.shape[1] + n - 1
    assert out.embeds.shape == (len(rows), width, d)
    for i in range(len(rows)):
        p = int((ids[i] == IMG).nonzero())
        # Expected: everything before the image token, the visual tokens, everything after.
        exp_embeds = torch.cat([embeds[i, :p], visual[i], embeds[i, p + 1 :]])
        exp_mask = torch.cat([mask[i, :p], torch.ones(n, dtype=torch.long), mask[i, p + 1 :]])
        exp_labels = torch.cat([labels[i, :p], torch.full((n,), IGNORE_INDEX), labels[i, p + 1 :]])
        exp_resp = torch.cat([resp[i, :p], torch.zeros(n, dtype=torch.bool), resp[i, p + 1 :]])
        torch.testing.assert_close(out.embeds[i], exp_embeds)
        assert torch.equal(out.attention_mask[i], exp_mask)
        assert torch.equal(out.labels[i], exp_labels)
        assert torch.equal(out.response_mask[i], exp_resp)
        assert out.image_positions[i] == p
        # Padding stays on its side.
        real = out.attention_mask[i].bool()
        first, last = int(real.nonzero().min()), int(real.nonzero().max())
        assert real[first : last + 1].all()
        assert (first == 0) if not left else (last == width - 1)


def test_splice_errors_name_the_samples() -> None:
    ids, mask, _, _ = batch([[1, IMG, 2], [1, 2, 3], [IMG, IMG, 3]])
    embeds, visual = torch.zeros(3, 3, 4), torch.zeros(3, 2, 4)
    with pytest.raises(ValueError, match="sample 1 has 0, sample 2 has 2"):
        splice_visual_tokens(embeds, ids, IMG, visual, mask)
    ids, mask, _, _ = batch([[1, IMG, 2]])
    mask[0, 1] = 0
    with pytest.raises(ValueError, match=r"sample\(s\) \[0\] lies in the padding"):
        splice_visual_tokens(embeds[:1], ids, IMG, visual[:1], mask)
    with pytest.raises(ValueError, match="B×N×D"):
        splice_visual_tokens(embeds[:1], ids, IMG, torch.zeros(1, 2, 5), torch.ones_like(mask))


# ------------------------------------------------------------------ several kinds and counts
REG = 8
N_IMAGE = 3


def reference(ids, mask, labels, resp, table, images, regions, left: bool):
    """Brute force: walk each sample token by token, replacing the k-th placeholder of a kind by the
    kind's k-th group of that sample; pad the results to the longest on the padding side."""
    rows = []
    for i in range(ids.shape[0]):
        queue = {IMG: list(images[i]), REG: list(regions[i])}
        e, m, lab, r, out_ids = [], [], [], [], []
        for t in range(ids.shape[1]):
            token = int(ids[i, t])
            if token in queue and mask[i, t]:
                for row in queue[token].pop(0):
                    e.append(row)
                    m.append(1)
                    lab.append(IGNORE_INDEX)
                    r.append(False)
                    out_ids.append(token)
            else:
                e.append(table[token])
                m.append(int(mask[i, t]))
                lab.append(int(labels[i, t]))
                r.append(bool(resp[i, t]))
                out_ids.append(token)
        rows.append((e, m, lab, r, out_ids))
    width = max(len(row[0]) for row in rows)
    out = {k: [] for k in ("embeds", "mask", "labels", "resp", "ids")}
    for e, m, lab, r, out_ids in rows:
        extra = width - len(e)
        pad = {
            "embeds": [torch.zeros(table.shape[1])] * extra,
            "mask": [0] * extra,
            "labels": [IGNORE_INDEX] * extra,
            "resp": [False] * extra,
            "ids": [PAD] * extra,
        }
        for key, values in zip(out, (e, m, lab, r, out_ids)):
            out[key].append(pad[key] + list(values) if left else list(values) + pad[key])
    return (
        torch.stack([torch.stack(row) for row in out["embeds"]]),
        torch.tensor(out["mask"]),
        torch.tensor(out["labels"]),
        torch.tensor(out["resp"]),
        torch.tensor(out["ids"]),
    )


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("form", ["rows", "groups"])
def test_splice_two_images_and_several_regions_per_sample(left: bool, form: str) -> None:
    g = torch.Generator().manual_seed(0)
    # 2 images per sample; 0, 2, 3 and 1 regions.
    rows = [
        [1, IMG, 2, IMG, 21, 22],
        [IMG, 3, REG, 4, REG, IMG, 23],
        [REG, 5, IMG, REG, IMG, 6, REG, 24, 25],
        [IMG, IMG, REG, 26],
    ]
    ids, mask, labels, resp = batch(rows, left)
    d = 4
    table = torch.randn(30, d, generator=g)
    embeds = table[ids]
    region_counts = [0, 2, 3, 1]
    images = [[torch.randn(N_IMAGE, d, generator=g) for _ in range(2)] for _ in rows]
    # Regions take 2 rows each here (a region encoder's tokens per prompt).
    regions = [[torch.randn(2, d, generator=g) for _ in range(c)] for c in region_counts]
    if form == "rows":
        # B×(2·N)×D for the images, n_i×D per sample for the regions: rows split evenly.
        image_value = torch.stack([torch.cat(groups) for groups in images])
        region_value = [torch.cat(groups) if groups else torch.zeros(0, d) for groups in regions]
    else:
        # c_i×n×D for the images, a list of n×D groups for the regions.
        image_value = [torch.stack(groups) for groups in images]
        region_value = regions
    out = splice_placeholders(
        embeds,
        ids,
        mask,
        {"<image>": (IMG, image_value), "<region>": (REG, region_value)},
        labels,
        resp,
        pad_token_id=PAD,
    )
    exp_embeds, exp_mask, exp_labels, exp_resp, exp_ids = reference(
        ids, mask, labels, resp, table, images, regions, left
    )
    torch.testing.assert_close(out.embeds, exp_embeds, rtol=0, atol=0)
    assert torch.equal(out.attention_mask, exp_mask)
    assert torch.equal(out.labels, exp_labels)
    assert torch.equal(out.response_mask, exp_resp)
    assert torch.equal(out.input_ids, exp_ids)


def test_splice_placeholders_gradients_reach_the_embeddings() -> None:
    ids, mask, _, _ = batch([[1, REG, 2, REG], [REG, 3]])
    embeds = torch.randn(2, 4, 3, requires_grad=True)
    regions = [torch.randn(2, 3, requires_grad=True), torch.randn(1, 3, requires_grad=True)]
    out = splice_placeholders(embeds, ids, mask, {"<region>": (REG, regions)})
    out.embeds.sum().backward()
    assert all(r.grad is not None and torch.equal(r.grad, torch.ones_like(r)) for r in regions)


def test_splice_placeholder_count_errors_name_placeholder_and_sample() -> None:
    ids, mask, _, _ = batch([[1, IMG, REG, 2], [IMG, REG, REG, 3]])
    embeds = torch.zeros(2, 4, 4)
    images = torch.zeros(2, 3, 4)

    def splice(regions):
        return splice_placeholders(embeds, ids, mask, {"<image>": (IMG, images), "<region>": (REG, regions)})

    with pytest.raises(
        ValueError, match="placeholder '<region>', sample 1: the text holds 2 placeholder.* but 3 embeddings"
    ):
        splice([torch.zeros(1, 4), torch.zeros(3, 4)])
    with pytest.raises(
        ValueError, match="placeholder '<region>', sample 0: the text holds 1 placeholder.* but 0 embeddings"
    ):
        splice([torch.zeros(0, 4), torch.zeros(2, 4)])
    with pytest.raises(
        ValueError, match="placeholder '<region>', sample 1: the text holds 2 placeholder.* but 3 groups"
    ):
        splice([[torch.zeros(1, 4)], [torch.zeros(1, 4)] * 3])
    with pytest.raises(ValueError, match="placeholder '<region>', sample 0: embeddings must be n×D with D=4"):
        splice([torch.zeros(1, 5), torch.zeros(2, 5)])
    with pytest.raises(ValueError, match="placeholder '<region>': embeddings for 1 samples given, the batch has 2"):
        splice([torch.zeros(1, 4)])
    text_only, text_mask, _, _ = batch([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="placeholder '<image>', sample 0: the text holds 0 placeholder.* but 3"):
        splice_placeholders(embeds[:, :2], text_only, text_mask, {"<image>": (IMG, images)})
    padded = mask.clone()
    padded[1, 2] = 0
    with pytest.raises(
        ValueError, match=r"placeholder '<region>', sample 1: lies in the padding at position\(s\) \[2\]"
    ):
        splice_placeholders(embeds, ids, padded, {"<region>": (REG, [torch.zeros(1, 4), torch.zeros(2, 4)])})


def test_one_image_per_sample_adds_no_padding() -> None:
    """The single-image case of the general splice equals splice_visual_tokens: every sample grows by N - 1."""
    for left in (False, True):
        ids, mask, labels, resp = batch([[1, IMG, 21], [IMG, 2, 3, 22, 23]], left)
        embeds, visual = torch.randn(2, 5, 4), torch.randn(2, 3, 4)
        general = splice_placeholders(embeds, ids, mask, {"<image>": (IMG, visual)}, labels, resp)
        single = splice_visual_tokens(embeds, ids, IMG, visual, mask, labels, resp)
        assert general.embeds.shape == (2, 5 + 3 - 1, 4)
        for key in ("embeds", "attention_mask", "labels", "response_mask", "input_ids"):
            assert torch.equal(getattr(general, key), getattr(single, key)), key

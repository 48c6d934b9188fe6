"""splice_visual_tokens against sequences built by hand, sample by sample."""

from __future__ import annotations

import pytest
import torch

from rsvlm.llm.splice import IGNORE_INDEX, splice_visual_tokens

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

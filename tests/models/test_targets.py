"""Several mask targets per sample: [SEG] groups read, decoded against their own image, paired
with the references in order, scored and trained."""

from __future__ import annotations

import pytest
import torch
from conftest import contract_batch, tiny_spex_components

from rsvlm.bridges.positions import SegGroups, complete_groups
from rsvlm.bridges.seg_codebook import SegCodebookBridge
from rsvlm.models.targets import EMPTY_LOGIT, pair_targets
from rsvlm.models.vlm import VisionLanguageModel
from rsvlm.training.metrics import BinarySegmentationMetrics


def test_complete_groups_drop_each_rows_cut_short_group():
    g = torch.Generator().manual_seed(0)
    positions = torch.rand(6, 20, generator=g) > 0.6
    got = complete_groups(positions, 3)
    for row, kept in zip(positions, got, strict=True):
        where = torch.nonzero(row).flatten().tolist()
        whole = len(where) - len(where) % 3  # brute force: the first whole groups, in order
        expected = torch.zeros_like(row)
        expected[where[:whole]] = True
        assert torch.equal(kept, expected)


def test_pairs_are_made_in_order_and_missing_predictions_are_empty():
    h = w = 4
    masks = [torch.ones(2, h, w), torch.zeros(1, h, w), torch.zeros(0, h, w)]
    batch = {"masks": masks, "image": torch.zeros(3, 1, h, w)}
    logits = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1).expand(4, 1, h, w)
    index = torch.tensor([0, 1, 1, 2])  # sample 0: one prediction for two references; 1: two for one; 2: one for none
    paired, refs, rows, extra = pair_targets(logits, index, batch)
    assert rows.tolist() == [0, 0, 1]
    assert paired[:, 0, 0, 0].tolist() == [0.0, EMPTY_LOGIT, 1.0]
    assert torch.equal(refs[:, 0], torch.cat(masks)) and extra == 2


@pytest.fixture
def model():
    parts = tiny_spex_components(special_tokens=("<image>", "[SEG]"))
    parts["bridge"] = SegCodebookBridge(in_dim=32, out_dim=32, num_tokens=2)
    return VisionLanguageModel(**parts, positions=SegGroups(["[SEG]"], group_size=2), stage="joint", log_images=0)


def target_batch(model):
    batch = contract_batch(model.llm.formatter)
    responses = ["Sure: the pond [SEG] [SEG] and the lake [SEG] [SEG].", "Sure: the river [SEG] [SEG]."]
    batch.update(model.llm.formatter(batch["instruction"], responses))
    batch["response"] = responses
    first, second, third = (torch.zeros(64, 64) for _ in range(3))
    first[4:20, 4:20], second[30:60, 30:60], third[:, 10:14] = 1, 1, 1
    batch["masks"] = [torch.stack([first, second]), third[None]]
    return batch


def bridge_targets(model, batch: dict, out: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The bridge's target tokens ``T×K×D`` and their image index ``T`` from a teacher-forced LLM
    pass over ``batch`` with the visual tokens of ``out`` (the model's forward), straight from the
    bridge rather than through the model."""
    hidden = model.llm(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        visual_tokens=out["visual_tokens"],
        labels=batch["labels"],
        response_mask=batch["response_mask"],
    )
    return model.bridge.targets(hidden.hidden_states, model.positions.teacher_forced(hidden))


def test_each_target_is_decoded_against_its_own_image_and_trained(model):
    batch = target_batch(model)
    out = model(batch)
    assert out["mask_logits"].shape == (3, 1, 64, 64) and out["scored_index"].tolist() == [0, 0, 1]
    # the same targets decoded one by one, straight from the bridge and the decoder
    tokens, index = bridge_targets(model, batch, out)
    for k in range(3):
        one = model.decoder(out["decoder_map"][index[k] : index[k] + 1], tokens[k : k + 1], (64, 64))
        assert torch.allclose(out["mask_logits"][k], one[0], atol=1e-5)
    losses = model.losses(out, batch, with_mask=True)
    losses["total"].backward()
    assert model.bridge.beta.grad is not None and model.bridge.beta.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.decoder.mask_decoder.output_hypernetworks_mlps[0].parameters())


def test_targets_are_scored_one_row_each_against_their_reference(model):
    batch = target_batch(model)
    out = model(batch)
    model._update_metrics("val", out, batch)
    reference = BinarySegmentationMetrics()
    reference.update(out["mask_logits"], torch.cat(batch["masks"])[:, None], batch["valid"][[0, 0, 1]])
    got = model.metrics["val"]["land_cover"].compute()
    assert all(torch.allclose(got[k], v) for k, v in reference.compute().items())


def test_without_references_the_targets_of_a_sample_are_united(model):
    batch = target_batch(model)
    model.eval()
    model.generation.max_new_tokens = 6
    with torch.no_grad():
        out = model.predict_masks({k: v for k, v in batch.items() if k != "masks"})
    assert out["mask_logits"].shape == (2, 1, 64, 64)
    for sample in range(2):
        rows = out["target_index"] == sample
        expected = out["target_logits"][rows].amax(dim=0) if rows.any() else torch.full((1, 64, 64), EMPTY_LOGIT)
        assert torch.allclose(out["mask_logits"][sample], expected)


def test_a_codebook_of_distinct_tokens_names_each_target():
    parts = tiny_spex_components(special_tokens=("<image>", "[SEG0]", "[SEG1]"))
    parts["bridge"] = SegCodebookBridge(in_dim=32, out_dim=32, num_tokens=2)
    model = VisionLanguageModel(**parts, positions=SegGroups(["[SEG0]", "[SEG1]"]), stage="joint", log_images=0)
    batch = target_batch(model)
    responses = [r.replace("[SEG] [SEG]", "[SEG0][SEG1]") for r in batch["response"]]
    batch.update(model.llm.formatter(batch["instruction"], responses))
    out = model(batch)
    assert out["scored_index"].tolist() == [0, 0, 1]
    ids = model.llm.tokenizer.convert_tokens_to_ids(["[SEG0]", "[SEG1]"])
    assert int(torch.isin(batch["input_ids"], torch.tensor(ids)).sum()) == 6


def test_a_decoder_that_reads_the_batch_gets_each_targets_own_image_and_category():
    """With several targets per sample, IndexPriorHead adds to each target the prior of its own
    sample: the wrapped decoder's logits per target plus w (2 m − 1) of that sample's channel."""
    from rsvlm.heads.index_prior import IndexPriorHead

    parts = tiny_spex_components(special_tokens=("<image>", "[SEG]"))
    parts["bridge"] = SegCodebookBridge(in_dim=32, out_dim=32, num_tokens=2)
    parts["decoder"] = IndexPriorHead(parts["decoder"], {"water": 3}, weight=3.0)
    model = VisionLanguageModel(**parts, positions=SegGroups(["[SEG]"], group_size=2), stage="joint", log_images=0)
    model.eval()
    batch = target_batch(model)
    batch["category"] = ["water", "vegetation"]
    batch["image"][:, 3] = (batch["image"][:, 3] > 0).float()
    with torch.no_grad():
        out = model(batch)
        tokens, index = bridge_targets(model, batch, out)
        for k in range(3):
            plain = model.decoder.decoder(out["decoder_map"][index[k] : index[k] + 1], tokens[k : k + 1], (64, 64))
            prior = 3.0 * (2 * batch["image"][index[k], 3] - 1) if batch["category"][index[k]] == "water" else 0.0
            torch.testing.assert_close(out["mask_logits"][k, 0], plain[0, 0] + prior, atol=1e-5, rtol=1e-5)

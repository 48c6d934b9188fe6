"""The text loss's two averages, over target positions only or over all, against a per-token loop
written here and torch's own cross-entropy (values and gradients)."""

import math

import pytest
import torch

from rsvlm.llm.chat import IGNORE_INDEX
from rsvlm.llm.text_loss import LOSS_POSITIONS, next_token_loss


def brute_force(logits: torch.Tensor, labels: torch.Tensor, average: str) -> float:
    per_sample = []
    for b in range(labels.shape[0]):
        terms = []
        for t in range(labels.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == IGNORE_INDEX:
                continue
            log_probs = logits[b, t].double().log_softmax(-1)
            terms.append(-float(log_probs[target]))
        per_sample.append(terms)
    if average == "token":
        flat = [x for terms in per_sample for x in terms]
        return sum(flat) / max(len(flat), 1)
    means = [sum(terms) / len(terms) for terms in per_sample if terms]
    return sum(means) / max(len(means), 1)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.full((3, 7), IGNORE_INDEX)
    labels[0, 2:7] = torch.tensor([1, 2, 3, 4, 5])  # a long answer
    labels[1, 5] = 6  # a one-token answer
    # sample 2 has no target at all and must not count in either average
    return logits, labels


@pytest.mark.parametrize("positions", LOSS_POSITIONS)
@pytest.mark.parametrize("average", ["token", "sample"])
def test_averages_match_a_per_token_loop(batch, average, positions):
    logits, labels = batch
    assert math.isclose(
        float(next_token_loss(logits, labels, average, positions)), brute_force(logits, labels, average), rel_tol=1e-5
    )


def test_sample_average_weighs_a_short_answer_as_much_as_a_long_one(batch):
    logits, labels = batch
    token, sample = (float(next_token_loss(logits, labels, a)) for a in ("token", "sample"))
    assert not math.isclose(token, sample, rel_tol=1e-3)


@pytest.mark.parametrize("positions", LOSS_POSITIONS)
def test_token_average_equals_torch_mean_reduction(batch, positions):
    logits, labels = batch
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    assert torch.allclose(next_token_loss(logits, labels, "token", positions), expected)


@pytest.mark.parametrize("average", ["token", "sample"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_target_rows_give_torchs_gradients_and_none_off_target(batch, average, dtype):
    """Only the positions followed by a target get a gradient, and it is the flat layout's."""
    logits, labels = batch
    grads = {}
    for positions in LOSS_POSITIONS:
        leaf = logits.to(dtype).requires_grad_()
        next_token_loss(leaf, labels, average, positions).backward()
        grads[positions] = leaf.grad
    assert grads["targets"].dtype == dtype
    has_target = torch.zeros(labels.shape, dtype=torch.bool)
    has_target[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    assert not grads["targets"][~has_target].any()
    tolerance = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(grads["targets"], grads["all"], **tolerance)
    if average == "token":  # torch's mean reduction over the flat N×V layout, gradient included
        flat = logits.to(dtype).requires_grad_()
        torch.nn.functional.cross_entropy(
            flat[:, :-1].float().reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
        ).backward()
        torch.testing.assert_close(grads["targets"], flat.grad, **tolerance)


def test_bf16_logits_are_scored_in_float32():
    """bf16 logits, one target: the loss is the float32 log-softmax of the bf16 values, not bf16's."""
    torch.manual_seed(1)
    logits = (torch.randn(1, 3, 50_000) * 8).to(torch.bfloat16)
    labels = torch.tensor([[IGNORE_INDEX, 7, IGNORE_INDEX]])
    expected = -logits[0, 0].float().log_softmax(-1)[7]
    for positions in LOSS_POSITIONS:
        torch.testing.assert_close(next_token_loss(logits, labels, "token", positions), expected)


def test_no_target_gives_zero_and_unknown_average_is_named():
    logits = torch.randn(2, 4, 5)
    labels = torch.full((2, 4), IGNORE_INDEX)
    assert float(next_token_loss(logits, labels, "sample")) == 0.0
    for positions in LOSS_POSITIONS:
        loss = next_token_loss(logits.clone().requires_grad_(), labels, "token", positions)
        assert float(loss.detach()) == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="loss_average"):
        next_token_loss(logits, labels, "batch")
    with pytest.raises(ValueError, match="loss_positions: must be one of targets, all, got 'some'"):
        next_token_loss(logits, labels, "token", "some")

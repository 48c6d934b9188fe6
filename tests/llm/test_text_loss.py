"""The text loss's two averages against a per-token loop written here."""

import math

import pytest
import torch

from rsvlm.llm.chat import IGNORE_INDEX
from rsvlm.llm.text_loss import next_token_loss


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


@pytest.mark.parametrize("average", ["token", "sample"])
def test_averages_match_a_per_token_loop(batch, average):
    logits, labels = batch
    assert math.isclose(
        float(next_token_loss(logits, labels, average)), brute_force(logits, labels, average), rel_tol=1e-5
    )


def test_sample_average_weighs_a_short_answer_as_much_as_a_long_one(batch):
    logits, labels = batch
    token, sample = (float(next_token_loss(logits, labels, a)) for a in ("token", "sample"))
    assert not math.isclose(token, sample, rel_tol=1e-3)


def test_token_average_equals_torch_mean_reduction(batch):
    logits, labels = batch
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    assert torch.allclose(next_token_loss(logits, labels, "token"), expected)


def test_no_target_gives_zero_and_unknown_average_is_named():
    logits = torch.randn(2, 4, 5)
    labels = torch.full((2, 4), IGNORE_INDEX)
    assert float(next_token_loss(logits, labels, "sample")) == 0.0
    with pytest.raises(ValueError, match="loss_average"):
        next_token_loss(logits, labels, "batch")

"""Which hidden states a bridge reads: response tokens, or a special token at / before it,
teacher-forced and generated — each against a loop written here."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rsvlm.bridges.positions import (
    ResponseTokens,
    SpecialToken,
    SuffixedFormatter,
    generated_positions,
    with_response_suffix,
)

SEG = 7


class _Tokenizer:
    unk_token_id = 0

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return self.vocab

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.vocab.get(token, self.unk_token_id)


def _bound(offset: str, count: int = 1) -> SpecialToken:
    positions = SpecialToken("[SEG]", offset=offset, count=count)
    positions.bind(SimpleNamespace(tokenizer=_Tokenizer({"[SEG]": SEG, "a": 1})))
    return positions


def _reference(ids: torch.Tensor, offset: str) -> list[list[bool]]:
    rows = []
    for row in ids.tolist():
        out = [False] * len(row)
        for i, token in enumerate(row):
            if token == SEG:
                out[max(i - 1, 0) if offset == "before" else i] = True
        rows.append(out)
    return rows


@pytest.mark.parametrize("offset", ["at", "before"])
def test_special_token_positions_teacher_forced(offset):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 6, (4, 12), generator=g)
    ids[0, 5] = ids[1, 11] = ids[2, 3] = ids[2, 8] = SEG  # row 3 has none
    got = _bound(offset).teacher_forced(SimpleNamespace(input_ids=ids))
    assert got.tolist() == _reference(ids, offset)


def test_special_token_generated_keeps_the_last_count_and_falls_back_to_the_last_tokens():
    sequences = torch.tensor([[1, SEG, 2, SEG, 3, 0], [1, 2, 3, 4, 0, 0], [SEG, SEG, SEG, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    gen = SimpleNamespace(sequences=sequences, mask=mask, response_mask=mask)
    got = _bound("at", count=2).generated(gen)
    # Row 0: both [SEG]; row 1: none generated → its last two generated tokens; row 2: the last two.
    assert got.tolist() == [
        [False, True, False, True, False, False],
        [False, False, False, True, True, False],
        [False, True, True, False, False, False],
    ]
    before = _bound("before", count=1).generated(gen)
    assert before.tolist()[0] == [False, False, True, False, False, False]  # predicts the last [SEG]


def test_special_token_needs_the_token_in_the_vocabulary():
    positions = SpecialToken("[SEG]")
    with pytest.raises(KeyError, match=r"'\[SEG\]' is not a token.*special_tokens"):
        positions.bind(SimpleNamespace(tokenizer=_Tokenizer({"a": 1})))
    with pytest.raises(ValueError, match="offset"):
        SpecialToken(offset="after")


def test_response_tokens_read_the_response_mask_and_the_generated_tokens():
    response = torch.tensor([[False, True, True, False]])
    assert ResponseTokens().teacher_forced(SimpleNamespace(response_mask=response)) is response
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    gen_response = torch.tensor([[True, True, False, False], [False, False, False, False]])
    got = ResponseTokens().generated(SimpleNamespace(mask=mask, response_mask=gen_response))
    assert torch.equal(got, generated_positions(gen_response, mask))


def test_suffix_is_appended_to_every_response_and_other_attributes_pass_through():
    calls = []

    class Formatter:
        eos = "<end>"

        def __call__(self, instructions, responses):
            calls.append((instructions, responses))
            return {"n": len(responses)}

    formatter = Formatter()
    assert with_response_suffix(formatter, "") is formatter
    wrapped = with_response_suffix(formatter, SpecialToken(count=2).response_suffix)
    assert isinstance(wrapped, SuffixedFormatter)
    assert wrapped(["q1", "q2"], ["r1", "r2"]) == {"n": 2}
    assert calls == [(["q1", "q2"], ["r1 [SEG] [SEG]", "r2 [SEG] [SEG]"])]
    assert wrapped.eos == "<end>"

"""The demo tokenizer's ``individual_digits``: numbers split into single digits, as Qwen2 and LLaMA do."""

from __future__ import annotations

import random

from rsvlm.data.spie.corpus import SpieDemoTokenizer


def test_individual_digits_give_one_token_per_digit_and_decode_back(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RSVLM_CACHE", str(tmp_path))
    digits = SpieDemoTokenizer(individual_digits=True).load()
    merged = SpieDemoTokenizer().load()
    assert (tmp_path / "demo-tokenizer-digits" / "tokenizer.json").is_file()
    assert (tmp_path / "demo-tokenizer" / "tokenizer.json").is_file()  # two builds side by side
    rng = random.Random(0)
    for _ in range(50):
        box = ",".join(f"{rng.random():.{rng.choice([2, 3])}f}" for _ in range(4))
        text = f"<p>the ship</p>[{box}] and {rng.randint(0, 10**6)} px"
        ids = digits(text)["input_ids"]
        pieces = digits.convert_ids_to_tokens(ids)
        # Reference: the string's digits, in order, are exactly the tokens that hold a digit.
        assert [p for p in pieces if any(c.isdigit() for c in p)] == [c for c in text if c.isdigit()]
        assert digits.decode(ids) == text
        assert merged.decode(merged(text)["input_ids"]) == text
    # Without the option, two-digit numbers merge into one token (the demo corpus is full of them).
    assert any(len(p) > 1 and p.isdigit() for p in merged.convert_ids_to_tokens(merged("0.25 0.50")["input_ids"]))

"""Demo tokenizer and ChatFormatter: template, label masking, padding, errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import rsvlm.llm.tokenizer as demo
from rsvlm.llm.chat import IGNORE_INDEX, ChatFormatter
from rsvlm.llm.tokenizer import build_demo_tokenizer

INSTRUCTIONS = ["Segment the water.", "Find all buildings in the scene and describe them."]
RESPONSES = ["A small pond lies in the top-left.", "Large buildings at the bottom-right cover 35% of the image."]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok") / "demo"
    build_demo_tokenizer(folder)
    return folder


@pytest.fixture()
def tokenizer(tok_dir):
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]}, False)
    return tok


def chatml(messages: list[dict], generation_prompt: bool) -> str:
    """Qwen2's ChatML written out by hand (default system turn when none is given)."""
    text = ""
    if messages[0]["role"] != "system":
        text += "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    for m in messages:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    if generation_prompt:
        text += "<|im_start|>assistant\n"
    return text


def test_demo_tokenizer_files_specials_and_template(tok_dir) -> None:
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert 1000 <= len(tok) <= 2000
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert tok(special, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(special)]
    for messages in (
        [{"role": "user", "content": "<image>\nSegment the water."}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "ok"},
        ],
    ):
        for gen in (True, False):
            assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen) == chatml(messages, gen)
    text = "Über 12.5% des Bildes: 水体 in the top-left! 🌊"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: anything round-trips


def test_demo_tokenizer_is_deterministic_and_cached(tmp_path, tok_dir, monkeypatch) -> None:
    other = build_demo_tokenizer(tmp_path / "again")
    assert (
        json.loads((tmp_path / "again" / "tokenizer.json").read_text())["model"]
        == json.loads((tok_dir / "tokenizer.json").read_text())["model"]
    )

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been loaded")

    monkeypatch.setattr(demo, "_train", no_training)
    assert build_demo_tokenizer(tmp_path / "again").get_vocab() == other.get_vocab()
    # A build from different settings is stale and gets rebuilt.
    (tmp_path / "again" / demo._DONE_MARKER).write_text("stale\n")
    with pytest.raises(AssertionError, match="cached"):
        build_demo_tokenizer(tmp_path / "again")


def test_demo_tokenizer_writes_spie_text_compactly(tok_dir) -> None:
    """APG keys, the instruction's words and the describer's phrases are whole tokens."""
    import numpy as np

    from rsvlm.data.spie.apg import format_prompt, instruction, region_attributes
    from rsvlm.data.spie.describe import AttributeDescriber

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    mask = np.zeros((40, 40), bool)
    mask[5:20, 8:30] = True
    mask[30:36, 2:6] = True
    text = instruction("water", format_prompt(region_attributes(mask), "water"))
    pieces = tok.tokenize(text)
    for word in ("Size", "Centroid", "Location", "Bounding", "Ġattributes", "Ġwater", "Ġregions"):
        assert word in pieces, word
    image = np.random.default_rng(0).uniform(0.1, 0.3, (6, 40, 40)).astype(np.float32)
    response = AttributeDescriber()(image, mask, "water", "demo")
    ids = tok(response)["input_ids"]
    assert tok.decode(ids) == response
    # Every word of the response is one or two tokens (byte-level pieces would be ~4).
    assert len(ids) <= 2 * len(response.split())
    # A count is one token, so that writing it is one decision.
    from rsvlm.data.spie.describe import NUMBER_WORDS

    for word in NUMBER_WORDS:
        assert len(tok.tokenize(" " + word)) == 1, word


def test_demo_tokenizer_refuses_foreign_folder(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a demo tokenizer folder"):
        build_demo_tokenizer(tmp_path)


def test_formatter_sequences_labels_and_masks(tokenizer) -> None:
    fmt = ChatFormatter(tokenizer)
    batch = fmt(INSTRUCTIONS, RESPONSES)
    b, width = batch["input_ids"].shape
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, (instruction, response) in enumerate(zip(INSTRUCTIONS, RESPONSES)):
        n = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i]
        # The sequence is the template's rendering of the whole exchange (minus its final newline).
        messages = [{"role": "user", "content": f"<image>\n{instruction}"}, {"role": "assistant", "content": response}]
        assert tokenizer.decode(ids[:n]) == chatml(messages, False).removesuffix("\n")
        assert (batch["attention_mask"][i, :n] == 1).all() and (batch["attention_mask"][i, n:] == 0).all()
        assert (ids[n:] == tokenizer.pad_token_id).all()
        # Labels: the response tokens and the closing <|im_end|>, nothing else.
        answer = tokenizer(response, add_special_tokens=False)["input_ids"]
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX].tolist()
        assert labelled == answer + [end_id]
        assert batch["labels"][i, n - 1] == end_id
        assert ids[batch["response_mask"][i]].tolist() == answer
        # The prompt, left-padded, is the template with the generation prompt.
        prompt = tokenizer(chatml(messages[:1], True), add_special_tokens=False)["input_ids"]
        p_mask = batch["prompt_attention_mask"][i].bool()
        assert batch["prompt_ids"][i][p_mask].tolist() == prompt
        assert not p_mask[: p_mask.numel() - len(prompt)].any()
        assert ids[: len(prompt)].tolist() == prompt
    assert batch["response_mask"].dtype == torch.bool


def test_formatter_system_prompt_and_pickle(tokenizer) -> None:
    fmt = ChatFormatter(tokenizer, system_prompt="You are a remote sensing expert.")
    text = tokenizer.decode(fmt(INSTRUCTIONS, RESPONSES)["input_ids"][0])
    assert text.startswith("<|im_start|>system\nYou are a remote sensing expert.<|im_end|>")
    clone = pickle.loads(pickle.dumps(fmt))
    for key, value in fmt(INSTRUCTIONS, RESPONSES).items():
        assert torch.equal(clone(INSTRUCTIONS, RESPONSES)[key], value)


def test_formatter_errors_name_the_sample(tokenizer) -> None:
    fmt = ChatFormatter(tokenizer, max_length=40)
    with pytest.raises(ValueError, match="sample 1: .* exceed max_length=40"):
        fmt(["Segment the water.", "Segment the water."], ["ok", "word " * 60])
    with pytest.raises(ValueError, match="sample 0: the prompt holds 2 '<image>'"):
        ChatFormatter(tokenizer)(["Look at <image> twice."], ["ok"])
    with pytest.raises(ValueError, match="'<seg>' is not a token"):
        ChatFormatter(tokenizer, image_token="<seg>")

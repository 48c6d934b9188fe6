"""The SPIE demo tokenizer: its corpus and vocabulary are the published ones, its files, its cache,
and recipes naming it by class_path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import chatml
from jsonargparse import ArgumentParser
from transformers import AutoTokenizer

import rsvlm.llm.tokenizer as bpe
from rsvlm.data.spie.apg import format_prompt, instruction, region_attributes
from rsvlm.data.spie.corpus import (
    DEMO_VOCAB_SIZE,
    SpieDemoTokenizer,
    build_demo_tokenizer,
    demo_corpus,
    demo_fingerprint,
)
from rsvlm.data.spie.describe import NUMBER_WORDS, AttributeDescriber
from rsvlm.llm.causal_lm import CausalLM

# Measured with the tokenizer code as it was before it moved here (rsvlm/llm/tokenizer.py at
# commit b19bca6): the SPEX demo's published numbers were trained with exactly this vocabulary.
PUBLISHED_FINGERPRINT = "ffb0f40e5abba0de"
PUBLISHED_CORPUS_SHA256 = "cdd64ab59095760ae8ed9b4e4e2e4e59605707b7b2be3d5dfad5ae36b2314d7e"
PUBLISHED_VOCAB_MERGES_SHA256 = "3160796dfabb25f54d2134b2083c2e2d51aca1257785ea6ecb212fcb89caaaf0"
PUBLISHED_SIZE = 1380

CHATML = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok") / "demo"
    build_demo_tokenizer(folder)
    return folder


def vocab_merges_sha256(tokenizer_json: Path) -> str:
    """A hash of the BPE vocabulary (by id) and merges (in order), independent of file formatting."""
    model = json.loads(tokenizer_json.read_text())["model"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    payload = json.dumps(
        {"vocab": sorted(model["vocab"].items(), key=lambda kv: kv[1]), "merges": merges}, ensure_ascii=False
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def test_demo_vocabulary_is_the_published_one(tok_dir) -> None:
    corpus = demo_corpus()
    assert hashlib.sha256("\n".join(corpus).encode()).hexdigest() == PUBLISHED_CORPUS_SHA256
    # The fingerprint, recomputed here from its definition: corpus, template, specials, size.
    digest = hashlib.sha256()
    for part in (*corpus, CHATML, "<|endoftext|>", "<|im_start|>", "<|im_end|>", str(DEMO_VOCAB_SIZE)):
        digest.update(part.encode() + b"\0")
    assert demo_fingerprint() == digest.hexdigest()[:16] == PUBLISHED_FINGERPRINT
    assert (tok_dir / bpe.DONE_MARKER).read_text().strip() == PUBLISHED_FINGERPRINT
    assert vocab_merges_sha256(tok_dir / "tokenizer.json") == PUBLISHED_VOCAB_MERGES_SHA256
    assert len(AutoTokenizer.from_pretrained(str(tok_dir))) == PUBLISHED_SIZE


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

    monkeypatch.setattr(bpe, "train_bpe", no_training)
    assert build_demo_tokenizer(tmp_path / "again").get_vocab() == other.get_vocab()
    # A build from different settings is stale and gets rebuilt.
    (tmp_path / "again" / bpe.DONE_MARKER).write_text("stale\n")
    with pytest.raises(AssertionError, match="cached"):
        build_demo_tokenizer(tmp_path / "again")


def test_a_cached_build_this_transformers_cannot_read_is_rebuilt(tmp_path, tok_dir, monkeypatch) -> None:
    """A folder saved by another transformers release carries the right fingerprint but may not
    load (4.x refuses the tokenizer class 5.x writes): it is rebuilt, identical to a fresh build."""
    folder = tmp_path / "tok"
    build_demo_tokenizer(folder)
    load, train = AutoTokenizer.from_pretrained, bpe.train_bpe
    loads: list[str] = []
    trainings: list[int] = []

    def refuses_first(path, *args, **kwargs):
        loads.append(path)
        if len(loads) == 1:
            raise ValueError("Tokenizer class TokenizersBackend does not exist or is not currently imported.")
        return load(path, *args, **kwargs)

    def counted(*args, **kwargs):
        trainings.append(1)
        return train(*args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuses_first)
    monkeypatch.setattr(bpe, "train_bpe", counted)
    rebuilt = build_demo_tokenizer(folder)
    assert len(trainings) == 1 and len(loads) == 2
    assert rebuilt.get_vocab() == load(str(tok_dir)).get_vocab()


def test_demo_tokenizer_writes_spie_text_compactly(tok_dir) -> None:
    """APG keys, the instruction's words and the describer's phrases are whole tokens."""
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
    for word in NUMBER_WORDS:
        assert len(tok.tokenize(" " + word)) == 1, word


def test_demo_tokenizer_refuses_foreign_folder(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a demo tokenizer folder"):
        build_demo_tokenizer(tmp_path)


def test_spie_demo_tokenizer_source(tok_dir) -> None:
    source = SpieDemoTokenizer(folder=str(tok_dir))
    assert source.load().get_vocab() == AutoTokenizer.from_pretrained(str(tok_dir)).get_vocab()
    assert "SpieDemoTokenizer" in repr(source)


def test_recipes_name_the_demo_tokenizer_by_class_path(tok_dir) -> None:
    """jsonargparse builds CausalLM's ``tokenizer`` from a class_path dict and from a plain string."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(CausalLM, "llm")
    by_class = parser.parse_object(
        {
            "llm": {
                "config": {"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 1},
                "tokenizer": {
                    "class_path": "rsvlm.data.spie.corpus.SpieDemoTokenizer",
                    "init_args": {"folder": str(tok_dir)},
                },
            }
        }
    )
    by_name = parser.parse_object({"llm": {"config": "qwen2.5-0.5b", "tokenizer": str(tok_dir)}})
    assert by_name.llm.tokenizer == str(tok_dir)
    built = parser.instantiate_classes(by_class).llm
    assert isinstance(built, CausalLM)
    with torch.device("meta"):
        named = parser.instantiate_classes(by_name).llm
    assert built.tokenizer.get_vocab() == named.tokenizer.get_vocab()

"""The batch contract (rsvlm.data.base.Batch): a SpieDataModule batch, tokenised by the real chat
formatter, has exactly the documented fields with the documented shapes and dtypes; split aliases."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from rsvlm.data.base import CONTRACT_KEYS, TEXT_KEYS, Batch, canonical_split
from rsvlm.data.generated import GeneratedData
from rsvlm.data.spie.datamodule import SpieDataModule

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

B, C, S = 3, 6, 40
# The contract as DESIGN.md and the rsvlm.data.base docstring state it: field → (shape, dtype);
# L = tokens of prompt + response, P = tokens of the prompt; None: a list of B Python objects.
DOCUMENTED = {
    "image": (("B", "C", "H", "W"), torch.float32),
    "mask": (("B", 1, "H", "W"), torch.float32),
    "valid": (("B", 1, "H", "W"), torch.bool),
    "category": (None, str),
    "instruction": (None, str),
    "response": (None, str),
    "meta": (None, dict),
    "input_ids": (("B", "L"), torch.long),
    "attention_mask": (("B", "L"), torch.long),
    "labels": (("B", "L"), torch.long),
    "response_mask": (("B", "L"), torch.bool),
    "prompt_ids": (("B", "P"), torch.long),
    "prompt_attention_mask": (("B", "P"), torch.long),
}
OPTIONAL = {"task", "visual_prompts"}  # datamodules that mix tasks; samples with drawn prompts


def test_typed_contract_lists_the_documented_fields():
    assert set(Batch.__annotations__) == set(DOCUMENTED) | OPTIONAL
    assert Batch.__required_keys__ == frozenset(CONTRACT_KEYS)
    assert Batch.__optional_keys__ == frozenset(TEXT_KEYS) | OPTIONAL
    assert set(CONTRACT_KEYS) | set(TEXT_KEYS) == set(DOCUMENTED)


@pytest.fixture(scope="module")
def formatter(tmp_path_factory):
    from rsvlm.data.spie.corpus import build_demo_tokenizer
    from rsvlm.llm.chat import ChatFormatter

    folder = tmp_path_factory.mktemp("tok") / "demo"
    build_demo_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]}, False)
    return ChatFormatter(tokenizer, max_length=4096)


def test_spie_batch_has_exactly_the_contract(formatter):
    dm = SpieDataModule(generate=GeneratedData(n_train=6, n_val=2, n_test=2, size=32), image_size=S, batch_size=B)
    dm.prepare_data()
    dm.setup("fit")
    dm.set_text_formatter(formatter)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == set(DOCUMENTED)
    lengths = {"B": B, "C": C, "H": S, "W": S, "L": batch["input_ids"].shape[1], "P": batch["prompt_ids"].shape[1]}
    for key, (shape, dtype) in DOCUMENTED.items():
        value = batch[key]
        if shape is None:
            assert isinstance(value, list) and len(value) == B and all(isinstance(v, dtype) for v in value), key
        else:
            assert value.shape == tuple(lengths.get(d, d) for d in shape), key
            assert value.dtype == dtype, key
    # Values the shapes alone do not pin down.
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert batch["response_mask"].sum() > 0
    assert (batch["labels"][batch["response_mask"]] != -100).all()
    assert (batch["attention_mask"].sum(1) > batch["response_mask"].sum(1)).all()


@pytest.mark.parametrize(
    "name,split", [("validation", "val"), ("valid", "val"), ("training", "train"), ("testing", "test"), ("val", "val")]
)
def test_split_aliases(name, split):
    assert canonical_split(name) == split

"""CausalLM with several placeholder kinds (<image> ×1–2, <region> ×0–3) and [SEG], against
sequences spliced by hand and run through the plain Hugging Face model; tokenizer sources."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_QWEN2_CONFIG
from jsonargparse import ArgumentParser
from transformers import AutoTokenizer

from rsvlm.data.spie.corpus import SpieDemoTokenizer
from rsvlm.llm.causal_lm import CausalLM
from rsvlm.llm.chat import IGNORE_INDEX
from rsvlm.llm.tokenizer import TokenizerSource

TINY = TINY_QWEN2_CONFIG
SPECIALS = ["<image>", "<region>", "[SEG]"]
N_IMAGE = 4
# Sample 0: one image, two regions; sample 1: two images, no region; sample 2: one image, three regions.
CONVERSATIONS = [
    [
        {"from": "human", "value": "<image>\nSegment the <region> and the <region>."},
        {"from": "gpt", "value": "Both are water [SEG]."},
    ],
    [
        {"from": "human", "value": "<image> <image>\nWhat changed?"},
        {"from": "gpt", "value": "A new road."},
        {"from": "human", "value": "Segment it."},
        {"from": "gpt", "value": "Here [SEG]."},
    ],
    [
        {"from": "human", "value": "<image>\nCompare <region>, <region> and <region>."},
        {"from": "gpt", "value": "The first is larger."},
    ],
]
IMAGES = [1, 2, 1]
REGIONS = [2, 0, 3]


@pytest.fixture(scope="module")
def lm() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(config=dict(TINY), tokenizer=SpieDemoTokenizer(), special_tokens=SPECIALS, freeze=False).eval()


def embeddings(seed: int = 1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per sample: the images' tokens (n_images·N × D) and the regions' tokens (one row each)."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(k * N_IMAGE, 32, generator=g) for k in IMAGES]
    regions = [torch.randn(k, 32, generator=g) for k in REGIONS]
    return images, regions


def by_hand(lm: CausalLM, ids: list[int], images: torch.Tensor, regions: torch.Tensor):
    """One unpadded sample spliced token by token: (embeds L'×D, spliced ids L')."""
    image_id, region_id = lm.special_token_ids["<image>"], lm.special_token_ids["<region>"]
    table = lm.model.get_input_embeddings()
    rows, out_ids = [], []
    next_image, next_region = 0, 0
    for token in ids:
        if token == image_id:
            group = images[next_image * N_IMAGE : (next_image + 1) * N_IMAGE]
            next_image += 1
        elif token == region_id:
            group = regions[next_region : next_region + 1]
            next_region += 1
        else:
            group = table(torch.tensor([token]))
        rows.append(group)
        out_ids += [token] * group.shape[0]
    assert (next_image, next_region) == (images.shape[0] // N_IMAGE, regions.shape[0])
    return torch.cat(rows), out_ids


def test_forward_with_images_regions_and_seg_equals_a_hand_spliced_pass(lm) -> None:
    batch = lm.formatter.conversations(CONVERSATIONS)
    images, regions = embeddings()
    out = lm(
        batch["input_ids"],
        batch["attention_mask"],
        labels=batch["labels"],
        response_mask=batch["response_mask"],
        placeholders={"<image>": images, "<region>": regions},
    )
    seg = lm.tokenizer.convert_tokens_to_ids("[SEG]")
    logits, targets = [], []
    for i in range(len(CONVERSATIONS)):
        n = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i, :n].tolist()
        embeds, spliced_ids = by_hand(lm, ids, images[i], regions[i])
        length = len(spliced_ids)
        ref = lm.model(inputs_embeds=embeds[None], output_hidden_states=True)
        torch.testing.assert_close(out.hidden_states[i, :length], ref.hidden_states[-1][0], atol=1e-5, rtol=1e-4)
        # With labels the LM head ran only at the positions before a target (loss_positions "targets").
        kept = out.logit_positions[out.logit_positions < length]
        torch.testing.assert_close(out.logits[i, : len(kept)], ref.logits[0, kept], atol=1e-5, rtol=1e-4)
        assert out.input_ids[i, :length].tolist() == spliced_ids
        assert not out.attention_mask[i, length:].any() and out.attention_mask[i, :length].all()
        # [SEG] found in spliced coordinates is the [SEG] of the text.
        assert [p for p, t in enumerate(spliced_ids) if t == seg] == (
            out.input_ids[i] == seg
        ).nonzero().flatten().tolist()
        # Labels and the response mask moved with the splice: the same tokens, in the same order.
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX]
        assert torch.equal(out.labels[i][out.labels[i] != IGNORE_INDEX], labelled)
        assert torch.equal(out.input_ids[i][out.response_mask[i]], batch["input_ids"][i][batch["response_mask"][i]])
        label_positions = (out.labels[i] != IGNORE_INDEX).nonzero().flatten()
        logits.append(ref.logits[0, label_positions - 1])
        targets.append(out.labels[i, label_positions])
    torch.testing.assert_close(out.loss, F.cross_entropy(torch.cat(logits), torch.cat(targets)))
    assert out.labels[0].tolist().count(seg) == 1 and out.labels[1].tolist().count(seg) == 1


def test_visual_tokens_is_the_image_placeholder(lm) -> None:
    batch = lm.formatter(["Segment the water.", "Find the roads."], ["Here.", "There are none."])
    visual = torch.randn(2, N_IMAGE, 32, generator=torch.Generator().manual_seed(2))
    a = lm(batch["input_ids"], batch["attention_mask"], visual, batch["labels"], batch["response_mask"])
    b = lm(
        batch["input_ids"],
        batch["attention_mask"],
        labels=batch["labels"],
        response_mask=batch["response_mask"],
        placeholders={"<image>": visual},
    )
    for key in ("loss", "logits", "hidden_states", "attention_mask", "response_mask", "input_ids", "labels"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert a.input_ids.shape == (2, batch["input_ids"].shape[1] + N_IMAGE - 1)


def test_generate_with_several_kinds_left_pads_and_matches_a_forward(lm) -> None:
    # Sample 0 grows by 2·(N-1) (two images), sample 1 by N-1 (one image, two one-row regions):
    # sample 1 gets N-1 more padding on the left, so both prompts still end where generation starts.
    prompts = [CONVERSATIONS[1][:1], CONVERSATIONS[0][:1]]
    growth = [2 * (N_IMAGE - 1), N_IMAGE - 1]
    batch = lm.formatter.conversations(prompts)
    images, regions = embeddings()
    images, regions = [images[1], images[0]], [regions[1], regions[0]]
    gen = lm.generate(
        batch["prompt_ids"],
        batch["prompt_attention_mask"],
        None,
        max_new_tokens=5,
        placeholders={"<image>": images, "<region>": regions},
    )
    for i in range(2):
        keep = int(gen.mask[i].sum())
        prompt = batch["prompt_ids"][i][batch["prompt_attention_mask"][i].bool()]
        ids = torch.cat([prompt, gen.sequences[i, :keep]])[None]
        ref = lm(ids, torch.ones_like(ids), placeholders={"<image>": images[i : i + 1], "<region>": regions[i : i + 1]})
        start = prompt.numel() + growth[i]
        torch.testing.assert_close(gen.hidden_states[i, :keep], ref.hidden_states[0, start:], atol=1e-4, rtol=1e-4)
        # Greedy decoding: each generated token is the argmax of the teacher-forced logits.
        assert torch.equal(ref.logits[0, start - 1 : -1].argmax(-1), gen.sequences[i, :keep])


def test_placeholder_errors(lm) -> None:
    batch = lm.formatter.conversations(CONVERSATIONS[:1])
    images, regions = embeddings()
    args = (batch["input_ids"], batch["attention_mask"])
    with pytest.raises(ValueError, match=r"placeholders \['<box>'\] are not special tokens"):
        lm(*args, placeholders={"<image>": images[:1], "<box>": regions[:1]})
    with pytest.raises(ValueError, match="given both as visual_tokens and in placeholders"):
        lm(*args, images[0][None], placeholders={"<image>": images[:1]})
    with pytest.raises(ValueError, match="placeholder '<region>', sample 0: the text holds 2 placeholder"):
        lm(*args, placeholders={"<image>": images[:1], "<region>": regions[2:]})
    with pytest.raises(ValueError, match="hold '<image>' but no visual_tokens"):
        lm(*args)


class FolderTokenizer(TokenizerSource):
    """A tokenizer source of this test: a saved folder."""

    loads = 0

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def load(self):
        FolderTokenizer.loads += 1
        return AutoTokenizer.from_pretrained(self.folder)


def test_tokenizer_is_a_string_or_a_source(lm, tmp_path) -> None:
    lm.tokenizer.save_pretrained(tmp_path / "tok")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(CausalLM, "llm")
    source = {"class_path": f"{__name__}.FolderTokenizer", "init_args": {"folder": str(tmp_path / "tok")}}
    for value, kind in ((source, FolderTokenizer), (str(tmp_path / "tok"), str)):
        config = parser.parse_object({"llm": {"config": dict(TINY), "tokenizer": value, "special_tokens": SPECIALS}})
        built = parser.instantiate_classes(config).llm
        if kind is str:
            assert config.llm.tokenizer == value
        else:
            assert config.llm.tokenizer.class_path == source["class_path"]
            assert FolderTokenizer.loads == 1
        assert built.special_token_ids == lm.special_token_ids
        assert built.tokenizer.get_vocab() == lm.tokenizer.get_vocab()
    with pytest.raises(ValueError, match="SpieDemoTokenizer"):
        CausalLM(config=dict(TINY), tokenizer="demo")

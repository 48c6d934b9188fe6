"""ChatFormatter: template, label masking, padding, errors; multi-turn conversations against hand-built ids."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest import chatml
from transformers import AutoTokenizer

from rsvlm.data.spie.corpus import build_demo_tokenizer
from rsvlm.llm.chat import IGNORE_INDEX, ChatFormatter

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


# A LLaVA-style conversation: two images' worth of questions, regions in a later turn.
LLAVA = [
    {"from": "human", "value": "<image>\nWhat is in this scene?"},
    {"from": "gpt", "value": "A river crosses farmland."},
    {"from": "human", "value": "Where is the water?"},
    {"from": "gpt", "value": "In the center [SEG]."},
]


def hand_built(tokenizer, system: str, turns: list[tuple[str, str]], end_id: int):
    """ids, labels and response mask of a conversation, tokenized piece by piece by hand."""

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ids, labels, response = [], [], []
    scaffold = f"<|im_start|>system\n{system}<|im_end|>\n"
    for user, answer in turns:
        scaffold += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        piece = enc(scaffold)
        ids += piece
        labels += [IGNORE_INDEX] * len(piece)
        response += [False] * len(piece)
        prompt = list(ids)
        answer_ids = enc(answer)
        ids += answer_ids + [end_id]
        labels += answer_ids + [end_id]
        response += [True] * len(answer_ids) + [False]
        scaffold = "\n"  # what the template writes after a turn's closing token
    return ids, labels, response, prompt


def test_multi_turn_conversations_match_hand_built_ids(tokenizer) -> None:
    tokenizer.add_special_tokens({"additional_special_tokens": ["[SEG]"]}, False)
    fmt = ChatFormatter(tokenizer)
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    short = [{"role": "user", "content": "<image>\nSegment the water."}, {"role": "assistant", "content": "Here."}]
    batch = fmt.conversations([LLAVA, short])
    references = [
        hand_built(
            tokenizer,
            "You are a helpful assistant.",
            [(t["value"], a["value"]) for t, a in zip(LLAVA[::2], LLAVA[1::2])],
            end_id,
        ),
        hand_built(tokenizer, "You are a helpful assistant.", [(short[0]["content"], short[1]["content"])], end_id),
    ]
    width = max(len(r[0]) for r in references)
    assert batch["input_ids"].shape == (2, width)
    for i, (ids, labels, response, prompt) in enumerate(references):
        n = len(ids)
        assert batch["input_ids"][i, :n].tolist() == ids
        assert (batch["input_ids"][i, n:] == fmt.pad_token_id).all()
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][i].tolist() == labels + [IGNORE_INDEX] * (width - n)
        assert batch["response_mask"][i].tolist() == response + [False] * (width - n)
        p_mask = batch["prompt_attention_mask"][i].bool()
        assert batch["prompt_ids"][i][p_mask].tolist() == prompt
        assert not p_mask[: p_mask.numel() - len(prompt)].any()
    # The whole sequence is the template's rendering of the conversation (minus its final newline).
    messages = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in LLAVA]
    assert tokenizer.decode(batch["input_ids"][0, : len(references[0][0])]) == chatml(messages, False).removesuffix(
        "\n"
    )
    # [SEG] in an answer is one labelled token.
    seg = tokenizer.convert_tokens_to_ids("[SEG]")
    assert batch["labels"][0].tolist().count(seg) == 1


def test_single_turn_call_equals_the_conversation_path(tokenizer) -> None:
    fmt = ChatFormatter(tokenizer, system_prompt="Be brief.")
    conversations = [
        [{"role": "user", "content": f"<image>\n{q}"}, {"role": "assistant", "content": a}]
        for q, a in zip(INSTRUCTIONS, RESPONSES)
    ]
    single, multi = fmt(INSTRUCTIONS, RESPONSES), fmt.conversations(conversations)
    assert single.keys() == multi.keys()
    for key in single:
        assert torch.equal(single[key], multi[key]), key
    ids, labels, response, prompt = hand_built(
        tokenizer,
        "Be brief.",
        [(f"<image>\n{INSTRUCTIONS[0]}", RESPONSES[0])],
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    assert single["input_ids"][0, : len(ids)].tolist() == ids
    assert single["labels"][0, : len(ids)].tolist() == labels


def test_conversation_ending_with_a_user_turn_is_a_prompt(tokenizer) -> None:
    fmt = ChatFormatter(tokenizer)
    open_ended = LLAVA[:3]
    batch = fmt.conversations([open_ended])
    messages = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in open_ended]
    prompt = batch["prompt_ids"][0][batch["prompt_attention_mask"][0].bool()]
    assert tokenizer.decode(prompt) == chatml(messages, True)
    assert torch.equal(batch["input_ids"][0], prompt)
    # Only the first assistant turn is labelled.
    labelled = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert labelled == tokenizer(LLAVA[1]["value"], add_special_tokens=False)["input_ids"] + [end_id]


def test_conversation_errors_name_sample_and_turn(tokenizer) -> None:
    fmt = ChatFormatter(tokenizer)
    with pytest.raises(ValueError, match="sample 1, turn 0: expected a role"):
        fmt.conversations([LLAVA, [{"from": "robot", "value": "hi"}]])
    with pytest.raises(ValueError, match="sample 0, turn 1: an assistant turn holds '<image>'"):
        fmt.conversations([[LLAVA[0], {"from": "gpt", "value": "<image>"}]])
    with pytest.raises(ValueError, match="sample 0: .* exceed max_length=20"):
        ChatFormatter(tokenizer, max_length=20).conversations([LLAVA])

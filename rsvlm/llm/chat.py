"""Chat formatting and label masking for instruction → response training, single- or multi-turn.

:class:`ChatFormatter` turns (instruction, response) pairs, or whole conversations (LLaVA-style
lists of turns), into the token tensors a causal LM trains on. The text is rendered with the
tokenizer's own chat template (a single-turn user message is ``"<image>\\n" + instruction``);
only the assistant turns and the token closing each carry labels: everything else (user turns,
system prompt, template scaffolding) is -100, so the text loss is computed on the responses alone.
Prompts for generation end with the assistant opening of the template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

# LLaVA's speaker names and the chat roles they stand for.
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class ConversationPieces:
    """One tokenized conversation (unpadded, length L_i).

    Attributes:
        ids: the token ids.
        labelled: True on the tokens that carry a label (assistant contents and their closing tokens).
        response: True on assistant contents (the response mask).
        prompt_length: how many leading ids form the generation prompt (up to the last assistant opening).
    """

    ids: list[int]
    labelled: list[bool]
    response: list[bool]
    prompt_length: int


def single_token_id(tokenizer: PreTrainedTokenizerBase, token: str, what: str) -> int:
    """The id of ``token`` when the tokenizer keeps it as one token, else a ValueError naming ``what``."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (tokenizer.unk_token_id is not None and token_id == tokenizer.unk_token_id):
        raise ValueError(
            f"{what} {token!r} is not a token of the tokenizer; add it as a special token "
            f"(CausalLM(special_tokens=[..., {token!r}]))"
        )
    pieces = tokenizer(token, add_special_tokens=False)["input_ids"]
    if pieces != [token_id]:
        raise ValueError(f"{what} {token!r} is split into {len(pieces)} tokens; add it as a special token")
    return int(token_id)


def default_end_token(tokenizer: PreTrainedTokenizerBase) -> str:
    """The token that closes an assistant turn: ChatML's ``<|im_end|>`` when the tokenizer has it
    (Qwen2 base models use ``<|endoftext|>`` as EOS but close turns with ``<|im_end|>``), else EOS."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if im_end is not None and im_end != tokenizer.unk_token_id:
        return "<|im_end|>"
    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has neither <|im_end|> nor an eos_token; pass end_token explicitly")
    return tokenizer.eos_token


class ChatFormatter:
    """Instructions and responses → right-padded training tensors and left-padded prompts.

    Picklable (it holds only the tokenizer and plain settings), so a DataLoader worker can call it.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template and ``image_token`` as one token.
        image_token: placeholder where the LLM splices the visual tokens.
        system_prompt: system message; ``None`` leaves the template's default.
        max_length: most tokens a sample may have (before splicing); longer samples are an error.
        end_token: token closing the response; default :func:`default_end_token`.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_token: str = "<image>",
        system_prompt: str | None = None,
        max_length: int = 2048,
        end_token: str | None = None,
    ) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat_template")
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.image_token_id = single_token_id(tokenizer, image_token, "image_token")
        self.end_token = end_token or default_end_token(tokenizer)
        self.end_token_id = single_token_id(tokenizer, self.end_token, "end_token")
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.end_token_id

    # ------------------------------------------------------------------ pieces
    def prompt_text(self, instruction: str) -> str:
        """The rendered prompt for one instruction, ending with the generation prompt."""
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages.append({"role": "user", "content": f"{self.image_token}\n{instruction}"})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _encode(self, text: str) -> list[int]:
        # The template already spells out any BOS it wants.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, instruction: str, index: int = 0) -> list[int]:
        """Token ids of one prompt; ``index`` names the sample in errors."""
        ids = self._encode(self.prompt_text(instruction))
        self._check_image_count(ids, index, instruction)
        return ids

    def _check_image_count(self, ids: list[int], index: int, instruction: str) -> None:
        count = ids.count(self.image_token_id)
        if count != 1:
            raise ValueError(
                f"sample {index}: the prompt holds {count} {self.image_token!r} tokens, expected exactly 1 "
                f"(does the instruction {instruction[:80]!r} contain {self.image_token!r}?)"
            )

    # ------------------------------------------------------------------ conversations
    def messages(self, conversation: Sequence[Mapping[str, str]], index: int = 0) -> list[dict[str, str]]:
        """LLaVA-style turns (``{"from": "human"|"gpt"|"system", "value": ...}``) or chat messages
        (``{"role": ..., "content": ...}``) → chat messages, with the system prompt prepended when
        set and the conversation has none; ``index`` names the sample in errors."""
        out = []
        for turn, message in enumerate(conversation):
            role = message.get("role", message.get("from"))
            content = message.get("content", message.get("value"))
            role = _ROLES.get(str(role).lower())
            if role is None or not isinstance(content, str):
                raise ValueError(
                    f"sample {index}, turn {turn}: expected a role (user/assistant/system or human/gpt) and a "
                    f"text content, got {dict(message)}"
                )
            if role == "assistant" and self.image_token in content:
                raise ValueError(f"sample {index}, turn {turn}: an assistant turn holds {self.image_token!r}")
            out.append({"role": role, "content": content})
        if self.system_prompt is not None and (not out or out[0]["role"] != "system"):
            out.insert(0, {"role": "system", "content": self.system_prompt})
        return out

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def conversation_pieces(self, conversation: Sequence[Mapping[str, str]], index: int = 0) -> ConversationPieces:
        """One conversation as token ids with its labels, the prompt ending with the last assistant opening.

        The text is the chat template's rendering, tokenized in pieces: template scaffolding
        (unlabelled), each assistant turn's content (labelled, in the response mask) and the token
        closing it (labelled). The sequence ends with the last assistant turn's closing token; a
        conversation ending with a user turn has no labels and its prompt is the whole text plus the
        assistant opening.
        """
        messages = self.messages(conversation, index)
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if messages and messages[-1]["role"] != "assistant":
            assistant.append(len(messages))  # the generation prompt of the reply to come
        ids: list[int] = []
        labelled: list[bool] = []
        response: list[bool] = []
        done = ""  # the rendered text already tokenized
        prompt_length = 0
        for a in assistant:
            before = self._render(messages[:a], True)
            if not before.startswith(done):
                raise ValueError(f"sample {index}: the chat template does not render the conversation turn by turn")
            scaffold = self._encode(before[len(done) :])
            ids += scaffold
            labelled += [False] * len(scaffold)
            response += [False] * len(scaffold)
            prompt_length = len(ids)
            if a == len(messages):
                break
            content = messages[a]["content"]
            # Later turns continue the rendered text after this turn's closing token, so it must be
            # where the template puts it (the last turn ends with it whatever the template does).
            if a != assistant[-1] and not self._render(messages[: a + 1], False).startswith(
                before + content + self.end_token
            ):
                raise ValueError(
                    f"sample {index}: the chat template does not close assistant turn {a} with {self.end_token!r}"
                )
            answer = self._encode(content)
            ids += [*answer, self.end_token_id]
            labelled += [True] * (len(answer) + 1)
            response += [True] * len(answer) + [False]
            done = before + content + self.end_token
        return ConversationPieces(ids, labelled, response, prompt_length)

    def conversations(self, conversations: Sequence[Sequence[Mapping[str, str]]]) -> dict[str, torch.Tensor]:
        """Format a batch of multi-turn conversations; see :meth:`conversation_pieces`.

        Returns:
            ``input_ids``, ``attention_mask``, ``labels`` (the ids of every assistant turn and its
            closing token, -100 elsewhere) and ``response_mask`` (bool, assistant content only), all
            ``B×L`` right-padded; plus ``prompt_ids`` and ``prompt_attention_mask`` ``B×P``
            left-padded: the text up to the last assistant turn, ending with the assistant opening.
        """
        rows = [self.conversation_pieces(c, i) for i, c in enumerate(conversations)]
        for i, row in enumerate(rows):
            self._check_length(i, len(row.ids), f"conversation of {len(conversations[i])} turns")
        return self._batch(rows)

    # ------------------------------------------------------------------ batches
    def prompts(self, instructions: list[str]) -> dict[str, torch.Tensor]:
        """Prompts only, LEFT-padded for generation.

        Returns:
            ``prompt_ids`` ``B×P`` long and ``prompt_attention_mask`` ``B×P`` long.
        """
        rows = [self.prompt_ids(text, i) for i, text in enumerate(instructions)]
        for i, row in enumerate(rows):
            self._check_length(i, len(row), f"instruction {instructions[i][:80]!r}")
        return self._left_pad(rows)

    def _left_pad(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row) :] = torch.tensor(row)
                mask[i, width - len(row) :] = 1
        return {"prompt_ids": ids, "prompt_attention_mask": mask}

    def __call__(self, instructions: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
        """Format a batch of single-turn exchanges.

        Args:
            instructions: B instruction strings (the user message follows ``image_token + "\\n"``).
            responses: B response strings.

        Returns:
            ``input_ids``, ``attention_mask``, ``labels`` (-100 except response tokens and the
            closing token) and ``response_mask`` (bool, response tokens only), all ``B×L``
            right-padded; plus ``prompt_ids`` and ``prompt_attention_mask`` ``B×P`` left-padded.
        """
        if len(instructions) != len(responses):
            raise ValueError(f"{len(instructions)} instructions but {len(responses)} responses")
        rows = []
        for i, (instruction, response) in enumerate(zip(instructions, responses)):
            conversation = [
                {"role": "user", "content": f"{self.image_token}\n{instruction}"},
                {"role": "assistant", "content": response},
            ]
            row = self.conversation_pieces(conversation, i)
            self._check_image_count(row.ids[: row.prompt_length], i, instruction)
            self._check_length(i, len(row.ids), f"instruction {instruction[:80]!r}")
            rows.append(row)
        return self._batch(rows)

    def _batch(self, rows: list[ConversationPieces]) -> dict[str, torch.Tensor]:
        width = max(len(row.ids) for row in rows)
        b = len(rows)
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, width), dtype=torch.long)
        labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
        response_mask = torch.zeros((b, width), dtype=torch.bool)
        for i, row in enumerate(rows):
            n = len(row.ids)
            ids = torch.tensor(row.ids, dtype=torch.long)
            input_ids[i, :n] = ids
            attention_mask[i, :n] = 1
            labels[i, :n] = torch.where(torch.tensor(row.labelled), ids, IGNORE_INDEX)
            response_mask[i, :n] = torch.tensor(row.response)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "response_mask": response_mask,
            **self._left_pad([row.ids[: row.prompt_length] for row in rows]),
        }

    def _check_length(self, index: int, length: int, what: str) -> None:
        if length > self.max_length:
            raise ValueError(
                f"sample {index}: {length} tokens exceed max_length={self.max_length} "
                f"({what}); shorten the text or raise max_length"
            )

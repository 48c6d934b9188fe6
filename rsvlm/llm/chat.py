"""Chat formatting and label masking for instruction → response training.

:class:`ChatFormatter` turns (instruction, response) pairs into the token tensors a causal LM
trains on. The prompt is rendered with the tokenizer's own chat template (the user message is
``"<image>\\n" + instruction``, with the generation prompt), the response and one closing token
follow, and only the response and the closing token carry labels: everything else is -100, so
the text loss is computed on the response alone.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


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
        count = ids.count(self.image_token_id)
        if count != 1:
            raise ValueError(
                f"sample {index}: the prompt holds {count} {self.image_token!r} tokens, expected exactly 1 "
                f"(does the instruction {instruction[:80]!r} contain {self.image_token!r}?)"
            )
        return ids

    # ------------------------------------------------------------------ batches
    def prompts(self, instructions: list[str]) -> dict[str, torch.Tensor]:
        """Prompts only, LEFT-padded for generation.

        Returns:
            ``prompt_ids`` ``B×P`` long and ``prompt_attention_mask`` ``B×P`` long.
        """
        rows = [self.prompt_ids(text, i) for i, text in enumerate(instructions)]
        for i, row in enumerate(rows):
            self._check_length(i, len(row), instructions[i])
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
        """Format a batch.

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
        rows: list[tuple[list[int], list[int]]] = []
        for i, (instruction, response) in enumerate(zip(instructions, responses)):
            prompt = self.prompt_ids(instruction, i)
            answer = self._encode(response)
            self._check_length(i, len(prompt) + len(answer) + 1, instruction)
            rows.append((prompt, answer))
        width = max(len(p) + len(a) + 1 for p, a in rows)
        b = len(rows)
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, width), dtype=torch.long)
        labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
        response_mask = torch.zeros((b, width), dtype=torch.bool)
        for i, (prompt, answer) in enumerate(rows):
            seq = prompt + answer + [self.end_token_id]
            p, n = len(prompt), len(seq)
            input_ids[i, :n] = torch.tensor(seq)
            attention_mask[i, :n] = 1
            labels[i, p:n] = torch.tensor(answer + [self.end_token_id])
            response_mask[i, p : p + len(answer)] = True
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "response_mask": response_mask,
            **self._left_pad([prompt for prompt, _ in rows]),
        }

    def _check_length(self, index: int, length: int, instruction: str) -> None:
        if length > self.max_length:
            raise ValueError(
                f"sample {index}: {length} tokens exceed max_length={self.max_length} "
                f"(instruction {instruction[:80]!r}); shorten the text or raise max_length"
            )

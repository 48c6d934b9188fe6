"""``rsvlm convert llava``: a LLaVA-1.5 checkpoint (llava-hf layout) → rsvlm component folders.

    OUT/vision/              CLIPVisionModel (save_pretrained): ClipTokenEncoder(model=OUT/vision)
    OUT/projector.safetensors   proj.0.* / proj.2.*: MLPProjector(checkpoint=OUT/projector.safetensors)
    OUT/llm/                 the language model (LlamaForCausalLM for LLaVA-1.5) with its lm_head and
                             the tokenizer, whose chat template is LLaVA's ``llava_v1`` conversation:
                             CausalLM(model=OUT/llm)

The conversion goes through transformers' ``LlavaForConditionalGeneration`` once, so key names
never need to be guessed; ``llava_v1`` is "<system> USER: <prompt> ASSISTANT: <answer></s>", turn
after turn, with the generation prompt "ASSISTANT: ".
"""

from __future__ import annotations

import os
from pathlib import Path

from rsvlm.contracts import RsvlmError

LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
#: LLaVA's ``conv_llava_v1`` (separators " " and "</s>") as a chat template.
LLAVA_V1_TEMPLATE = (
    '{{- "' + LLAVA_SYSTEM + ' " }}'  # double quotes: the system prompt has an apostrophe
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- 'USER: ' + message['content'] + ' ' }}"
    "{%- elif message['role'] == 'assistant' %}{{- 'ASSISTANT: ' + message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'ASSISTANT: ' }}{%- endif %}"
)


class ConvertError(RsvlmError, OSError):
    """A checkpoint to convert cannot be loaded (names it and the loader's reason)."""


def convert_llava(source: str | os.PathLike, out: str | os.PathLike, local_files_only: bool = False) -> Path:
    """Write the three component folders of a LLaVA checkpoint (hub id or folder) into ``out``."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaForConditionalGeneration

    out = Path(out).expanduser()
    try:
        llava = LlavaForConditionalGeneration.from_pretrained(str(source), local_files_only=local_files_only)
    except (OSError, ValueError) as error:
        raise ConvertError(
            f"convert llava: could not load {source} as LlavaForConditionalGeneration ({error})"
        ) from error
    out.mkdir(parents=True, exist_ok=True)
    llava.model.vision_tower.save_pretrained(out / "vision")
    projector = llava.model.multi_modal_projector
    state = {
        "proj.0.weight": projector.linear_1.weight,
        "proj.0.bias": projector.linear_1.bias,
        "proj.2.weight": projector.linear_2.weight,
        "proj.2.bias": projector.linear_2.bias,
    }
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(out / "projector.safetensors"))
    language = AutoModelForCausalLM.from_config(llava.config.text_config)
    language.model.load_state_dict(llava.model.language_model.state_dict())
    language.lm_head.load_state_dict(llava.lm_head.state_dict())
    language.save_pretrained(out / "llm")
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=local_files_only)
    tokenizer.chat_template = LLAVA_V1_TEMPLATE
    tokenizer.save_pretrained(out / "llm")
    return out

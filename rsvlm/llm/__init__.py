"""LLM: causal LM loading, LoRA, special tokens, chat formatting, placeholder splicing."""

from rsvlm.llm.causal_lm import CausalLM, LoraSettings
from rsvlm.llm.chat import ChatFormatter
from rsvlm.llm.outputs import Generation, LMOutput
from rsvlm.llm.tokenizer import TokenizerSource, build_bpe_tokenizer

__all__ = [
    "CausalLM",
    "ChatFormatter",
    "Generation",
    "LMOutput",
    "LoraSettings",
    "TokenizerSource",
    "build_bpe_tokenizer",
]

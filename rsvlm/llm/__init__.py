"""LLM: causal LM loading, LoRA, special tokens, chat formatting, visual-token splicing."""

from rsvlm.llm.causal_lm import CausalLM, LoraSettings
from rsvlm.llm.chat import ChatFormatter
from rsvlm.llm.tokenizer import build_demo_tokenizer

__all__ = ["CausalLM", "ChatFormatter", "LoraSettings", "build_demo_tokenizer"]

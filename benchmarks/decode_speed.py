"""Per-token decode time of ``CausalLM.generate`` at batch 1, the part of SPEX's mask inference
that grows with the 256 generated tokens. Prints a Markdown table.

Each variant generates exactly ``--tokens`` tokens after a ``--prompt``-token prompt (random
weights of a shipped architecture, LoRA on the attention projections as in ``recipes/spex.yaml``,
the paper's sampling settings); per token = (time for N tokens − time for 1) / (N − 1), the median
of ``--repeats`` after a warm-up, so the prompt pass and the final hidden-state pass cancel out.

* ``LoRA adapters`` — the trained model as rsvlm runs it (peft's LoRA layers in the forward);
* ``LoRA merged`` — the same update folded into the weights (peft's ``merge_adapter``);
* ``no LoRA`` — the base model alone (peft's ``disable_adapter``);
* ``... + static cache, compiled`` — ``cache_implementation="static"``: Hugging Face's static
  KV cache, whose forward ``generate`` compiles on CUDA; as rsvlm predicts with the setting (LoRA
  adapters) and merged. The first call compiles; ``--no-compile`` leaves these rows out.

    python benchmarks/decode_speed.py                                  # qwen2.5-1.5b on the GPU
    python benchmarks/decode_speed.py --device cpu --layers 28 --hidden 64 --no-compile
                                       # the Python overhead per token of each variant, on the CPU
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from geomag import device_name, timed  # noqa: E402

from rsvlm.data.spie.corpus import SpieDemoTokenizer  # noqa: E402
from rsvlm.llm.causal_lm import CausalLM, LoraSettings  # noqa: E402
from rsvlm.llm.configs import load_config_dict  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build_llm(config: str, layers: int | None, hidden: int | None, device: torch.device, dtype) -> CausalLM:
    overrides = {}
    if layers is not None:
        overrides["num_hidden_layers"] = layers
    if hidden is not None:
        overrides.update(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4, num_key_value_heads=2)
    architecture = config
    if overrides:
        # A dict config takes the tokenizer's vocabulary unless it names one: keep the real one,
        # whose LM head and sampling over 151,936 words are part of each token's cost.
        architecture = {"base": config, "vocab_size": load_config_dict(config)["vocab_size"], **overrides}
    llm = CausalLM(
        config=architecture,
        tokenizer=SpieDemoTokenizer(),
        freeze=True,
        lora=LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    return llm.to(device=device, dtype=dtype).eval()


def exactly(llm: CausalLM, tokens: int) -> Callable[[], None]:
    """Makes the Hugging Face ``generate`` under ``llm`` produce exactly ``tokens`` tokens (random
    weights would stop at an end token anywhere: ``min_new_tokens`` holds the stop tokens back);
    returns the undo."""
    hf_model = llm.model

    def generate(*args, generation_config, **kwargs):
        generation_config.min_new_tokens = tokens
        return type(hf_model).generate(hf_model, *args, generation_config=generation_config, **kwargs)

    hf_model.generate = generate
    return lambda: delattr(hf_model, "generate")


def seconds(llm: CausalLM, prompt: int, tokens: int, repeats: int, static: bool, device: torch.device) -> float:
    ids = torch.randint(0, len(llm.tokenizer), (1, prompt), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    settings = {"do_sample": True, "temperature": 0.3, "top_p": 0.9, "repetition_penalty": 1.1}
    cache = "static" if static else None
    undo = exactly(llm, tokens)
    try:
        # One untimed call warms up (and compiles, with a static cache).
        median, generation = timed(
            lambda: llm.generate(ids, mask, None, max_new_tokens=tokens, cache_implementation=cache, **settings),
            1,
            repeats,
            device,
        )
    finally:
        undo()
    assert generation.sequences.shape[1] == tokens, generation.sequences.shape
    return median


def per_token_ms(llm: CausalLM, args, static: bool, device: torch.device) -> tuple[float, float]:
    one = seconds(llm, args.prompt, 1, args.repeats, static, device)
    many = seconds(llm, args.prompt, args.tokens, args.repeats, static, device)
    return 1000 * (many - one) / (args.tokens - 1), many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="qwen2.5-1.5b", help="a shipped LLM architecture")
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers")
    parser.add_argument("--hidden", type=int, default=None, help="override the width (a small model: overhead only)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--prompt", type=int, default=400, help="prompt tokens (SPEX: ~256 visual + the instruction)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    llm = build_llm(args.config, args.layers, args.hidden, device, DTYPES[args.dtype])
    name = device_name(device)
    shape = f"{llm.model.config.num_hidden_layers} layers × {llm.model.config.hidden_size}"
    print(f"\n{name}, torch {torch.__version__}, {args.config} ({shape}), {args.dtype}, prompt {args.prompt}\n")
    print(f"| variant | ms per generated token | seconds for {args.tokens} tokens |")
    print("|---|---:|---:|")

    def row(label: str, static: bool = False) -> None:
        try:
            ms, total = per_token_ms(llm, args, static, device)
        except Exception as error:  # one failed variant must not cost the others (one GPU session)
            print(f"| {label} | failed: {type(error).__name__}: {str(error)[:200]} | |", flush=True)
            return
        print(f"| {label} | {ms:.1f} | {total:.2f} |", flush=True)

    peft_model = llm.model
    row("LoRA adapters (as trained)")
    if not args.no_compile:
        row("LoRA adapters + static cache, compiled", static=True)
    with peft_model.disable_adapter():
        row("no LoRA")
    peft_model.merge_adapter()
    try:
        row("LoRA merged")
        if not args.no_compile:
            row("merged + static cache, compiled", static=True)
    finally:
        peft_model.unmerge_adapter()


if __name__ == "__main__":
    main()

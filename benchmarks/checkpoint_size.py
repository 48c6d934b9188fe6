"""Checkpoint size of the paper-shaped SPEX (frozen Qwen2.5-1.5B) against a full state-dict save.

The model is built from ``recipes/spex.yaml`` with random weights (the same weight-stripping as
``rsvlm summarize``: no downloads), so the numbers are those of the real layout. Rows:

* full state dict: ``torch.save(model.state_dict())``;
* rsvlm trained-only state dict: what :func:`rsvlm.training.trained_only.keep_trained_only` keeps;
* the same plus AdamW state for the trained parameters (what a resumable Lightning checkpoint
  holds), against the full state dict plus AdamW state.

Full saves are streamed into a byte counter (nothing written); the trained-only checkpoint is
really written (atomically) to a temporary folder and its file size measured.

    python benchmarks/checkpoint_size.py                      # LLM weights in float32 (as trained)
    python benchmarks/checkpoint_size.py --llm-dtype bfloat16 # when RAM is short (~3 GB less)
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rsvlm.experiments.summarize import without_weights  # noqa: E402
from rsvlm.training.checkpoints import save_atomically  # noqa: E402
from rsvlm.training.trained_only import human_bytes, keep_trained_only  # noqa: E402


class ByteCounter:
    """A write-only file object that counts bytes instead of storing them."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data) -> int:
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def saved_bytes(obj) -> int:
    counter = ByteCounter()
    torch.save(obj, counter)
    return counter.n


def build(recipe: Path, llm_dtype: str | None):
    import lightning as L
    from jsonargparse import ArgumentParser

    config = yaml.safe_load(recipe.read_text())
    init_args = config["model"]["init_args"]
    llm = init_args["llm"]["init_args"]
    # Where the real run's frozen weights come from: a trained-only checkpoint leaves those out.
    hub_id = llm.get("model")
    sam_path = init_args["decoder"]["init_args"].get("checkpoint")
    encoder_path = init_args["encoder"]["init_args"].get("checkpoint_path")
    if llm.get("model") and not llm.get("config"):
        # An LLM given by hub id: its architecture from the config shipped with rsvlm, no weights.
        from rsvlm.llm.configs import shipped_configs

        name = str(llm["model"]).rstrip("/").split("/")[-1].lower()
        if name not in shipped_configs():
            raise SystemExit(f"no shipped architecture config for {llm['model']}; give llm.init_args.config")
        llm.update(config=name, model=None, tokenizer=None)
    model_config = without_weights(config["model"])
    if llm_dtype:
        model_config["init_args"]["llm"]["init_args"]["torch_dtype"] = llm_dtype
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    parsed = parser.parse_object({"model": copy.deepcopy(model_config)})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    model = instantiate(parsed).model
    # Built with random weights: mark the parts the recipe's sources would restore.
    if hub_id:
        model.llm.weights_source = hub_id
    if sam_path:
        model.decoder.mask_decoder.weights_source = model.decoder.prompt_encoder.weights_source = sam_path
    if encoder_path:
        model.encoder.weights_source = encoder_path
    return model


def adamw_state(model) -> dict:
    """AdamW state after one step on the parameters every stage may train (zero gradients)."""
    params = [p for name in model.trainable.components for p in model.trainable.declared_parameters([name])]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.AdamW(params, lr=0.0)
    optimizer.step()
    for p in params:
        p.grad = None
    return optimizer.state_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "spex.yaml"))
    parser.add_argument("--llm-dtype", default=None, help="e.g. bfloat16 to build the LLM in half the memory")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    start = time.perf_counter()
    model = build(Path(args.recipe), args.llm_dtype)
    print(
        f"built {Path(args.recipe).name} with random weights in {time.perf_counter() - start:.0f} s "
        f"(LLM dtype {args.llm_dtype or 'float32'})\n"
    )

    print("| component | parameters | declared trainable | in trained-only checkpoint |")
    print("|---|---:|---:|---|")
    for name, module in model.trainable.components.items():
        total = sum(p.numel() for p in module.parameters())
        declared = sum(p.numel() for p in model.trainable.declared_parameters([name]))
        kept = (
            "all"
            if declared == total
            else ("none (frozen base, identity recorded)" if declared == 0 else "trained part")
        )
        print(f"| {name} | {total:,} | {declared:,} | {kept} |")

    full_bytes = saved_bytes(model.state_dict())
    checkpoint = {"state_dict": model.state_dict()}
    info = keep_trained_only(model, checkpoint)
    with tempfile.TemporaryDirectory() as folder:
        path = save_atomically(checkpoint, Path(folder) / "trained-only.ckpt")
        trimmed_bytes = path.stat().st_size
    optimizer = adamw_state(model)
    optimizer_bytes = saved_bytes(optimizer)
    del optimizer
    gc.collect()

    rows = [
        ("full state dict (torch.save(model.state_dict()))", full_bytes),
        ("rsvlm trained-only state dict (file written)", trimmed_bytes),
        ("full state dict + AdamW state", full_bytes + optimizer_bytes),
        ("rsvlm trained-only + AdamW state (resumable checkpoint)", trimmed_bytes + optimizer_bytes),
    ]
    print("\n| checkpoint | size | vs full state dict |")
    print("|---|---:|---:|")
    for label, n in rows:
        print(f"| {label} | {human_bytes(n)} ({n:,} B) | {n / full_bytes:.1%} |")
    frozen = ", ".join(
        f"{k}: {v['num_params']:,} params (source {v['source']!r})" for k, v in info["frozen_bases"].items()
    )
    print(f"\nfrozen bases dropped: {frozen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``rsvlm export RUN --to FOLDER``: a shareable model folder (see :mod:`rsvlm.inference.export`)."""

from __future__ import annotations

import argparse


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rsvlm export",
        description="Write a run's model as a folder rsvlm.load reads offline (and the Hugging Face Hub takes as is).",
    )
    parser.add_argument("run", help="a run folder (its best checkpoint, else last.ckpt) or a checkpoint inside one")
    parser.add_argument("--to", required=True, help="the model folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --to")
    args = parser.parse_args(argv)
    from rsvlm.inference.export import export

    out = export(args.run, args.to, overwrite=args.overwrite)
    print(f"wrote {out} (README.md, model.safetensors, rsvlm.json, recipe.yaml, stats.json)")
    return 0

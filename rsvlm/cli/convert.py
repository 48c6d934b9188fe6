"""``rsvlm convert llava --from ID_OR_FOLDER --out FOLDER`` (see :mod:`rsvlm.llm.llava_convert`)."""

from __future__ import annotations

import argparse


def convert_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rsvlm convert", description="Convert a checkpoint into rsvlm components.")
    parser.add_argument("kind", choices=["llava"], help="what the checkpoint is")
    parser.add_argument("--from", dest="source", required=True, help="Hugging Face id or folder (llava-hf layout)")
    parser.add_argument("--out", required=True, help="folder to write vision/, projector.safetensors, llm/ into")
    parser.add_argument("--local-files-only", action="store_true", help="never contact the hub")
    args = parser.parse_args(argv)
    from rsvlm.llm.llava_convert import convert_llava

    out = convert_llava(args.source, args.out, local_files_only=args.local_files_only)
    print(f"wrote {out}/vision, {out}/projector.safetensors, {out}/llm")
    return 0

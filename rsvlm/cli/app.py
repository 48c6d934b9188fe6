"""``rsvlm app MODEL``: a local browser app for a trained model (see :mod:`rsvlm.app.ui`)."""

from __future__ import annotations

import argparse


def app_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rsvlm app", description="Serve a trained model in the browser (Gradio).")
    parser.add_argument("model", help="a model folder (rsvlm export), a run folder or a checkpoint")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from rsvlm.app.ui import _require_gradio, launch
    from rsvlm.inference.api import load

    _require_gradio()  # before loading a model
    launch(load(args.model, device=args.device), host=args.host, port=args.port)
    return 0

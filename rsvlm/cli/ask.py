"""``rsvlm ask MODEL IMAGE... --question TEXT --out FOLDER``: one question about each image, answered
by a trained model through :func:`rsvlm.load` (any system: SPEX tiles its scenes, GeoMag and
EarthGPT-X see whole images), written as ``rsvlm predict`` writes: the mask GeoTIFF with the
image's georeferencing, the overlay PNG and the answer JSON."""

from __future__ import annotations

import argparse


def ask_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rsvlm ask", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run folder, a checkpoint or an exported model folder")
    parser.add_argument("images", nargs="+", help="GeoTIFF / PNG / JPEG files")
    parser.add_argument("--question", required=True, help="the instruction, e.g. 'Segment the ship by the pier.'")
    parser.add_argument("--out", required=True, help="folder for the mask, overlay and answer of each image")
    parser.add_argument(
        "--granularity",
        default="pixel",
        choices=["image", "region", "pixel"],
        help="what the question asks about (routes MagCrop in models without its classifier)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")
    args = parser.parse_args(argv)
    import rsvlm

    model = rsvlm.load(args.model)
    options = {"granularity": args.granularity} if model.whole_image else {}
    results = model.predict(list(args.images), instruction=args.question, progress=True, **options)
    for result in results:
        files = result.save(args.out, overwrite=args.overwrite)
        print(f"{result.image}: {result.text!r} → {files['mask']}")
    return 0

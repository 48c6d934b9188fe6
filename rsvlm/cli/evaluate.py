"""``rsvlm evaluate``: score a trained checkpoint and the index baseline on labelled real images.

Examples::

    # the shipped real data (knows its folders, bands and label codes)
    rsvlm evaluate --config recipes/spex-demo.yaml --ckpt runs/spex-demo/checkpoints/last.ckpt \\
        --real-data ../shared/data --datasets sen1floods11-spain

    # any image / mask rasters on one grid
    rsvlm evaluate --config RECIPE --ckpt CKPT --images a.tif b.tif --masks a_mask.tif b_mask.tif \\
        --category water --bands sentinel2

Without ``--config``/``--ckpt`` only the baseline is scored. The table is printed; ``--out``
writes it as JSON too and ``--figures DIR`` one picture per image and category of where each
method hits, misses and adds (both atomically, never over an existing file unless ``--overwrite``,
checked before anything is scored).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from rsvlm.data.tiling import FLIPS, check_flips


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsvlm evaluate",
        description="Score a checkpoint and the index + Otsu baseline on the same labelled real images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model (omit both to score the baseline only)")
    model.add_argument("--config", help="the recipe the checkpoint was trained with")
    model.add_argument("--ckpt", help="the checkpoint (full or trained-only)")
    model.add_argument("--device", default="cpu", help="torch device for the model (default: cpu)")
    data = parser.add_argument_group("images: --real-data, or --images/--masks/--category/--bands")
    data.add_argument(
        "--real-data", help="the shipped real-data folder (sen1floods11-spain, chesapeake-naip-geobench, ...)"
    )
    data.add_argument("--datasets", nargs="+", help="only these folders of --real-data (default: every one present)")
    data.add_argument("--images", nargs="+", help="image rasters")
    data.add_argument("--masks", nargs="+", help="mask rasters, one per image, on the image's grid")
    data.add_argument("--category", help="what the masks label: water, vegetation or building")
    data.add_argument("--bands", help="band spec of --images (preset name or comma-separated names)")
    data.add_argument("--positive", type=int, nargs="+", default=[1], help="mask values that are the category")
    how = parser.add_argument_group("scoring")
    how.add_argument("--categories", nargs="+", help="score only these categories")
    how.add_argument(
        "--average",
        choices=("global", "image"),
        help="global: one confusion matrix; image: mean of per-image scores (default: the model's metric_average, else global)",
    )
    how.add_argument(
        "--overlap", type=int, help="pixels shared by neighbouring tiles (default: the recipe's predict_overlap)"
    )
    how.add_argument(
        "--flips",
        nargs="+",
        choices=tuple(FLIPS),
        help="test-time flips whose mirrored-back logits are averaged, 'none' among them "
        "(default: the recipe's predict_flips)",
    )
    how.add_argument(
        "--without-prior",
        action="store_true",
        help="add a row for the model's decoder alone: the logits its IndexPriorHead gives without the "
        "index prior they are a residual on",
    )
    how.add_argument(
        "--skip-missing-bands",
        action="store_true",
        help="give the model a 'skipped' row where an image lacks one of its bands, instead of stopping",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", help="also write the rows as JSON to this file")
    out.add_argument(
        "--figures",
        help="write DIR/<dataset>/<image>_<category>.png: the image, the reference and each method's "
        "hits (green), false alarms (red) and misses (blue) with its F1 on that image",
    )
    out.add_argument("--overwrite", action="store_true", help="replace --out and figures that exist")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def evaluate_main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.config) != bool(args.ckpt):
        parser.error("--config and --ckpt go together (or omit both to score the baseline only)")
    if bool(args.real_data) == bool(args.images):
        parser.error("give either --real-data or --images/--masks/--category/--bands")
    if args.images and not (args.masks and args.category and args.bands):
        parser.error("--images needs --masks, --category and --bands")
    if args.images and len(args.images) != len(args.masks):
        parser.error(f"--images gives {len(args.images)} file(s) but --masks gives {len(args.masks)}; they pair up")
    if args.flips:
        try:
            check_flips(args.flips, "--flips")
        except ValueError as err:
            parser.error(str(err))
    from rsvlm.inference.evaluate import BASELINE_NAME, EvaluateError, baseline_predictor, evaluate, format_table

    if args.out and Path(args.out).exists() and not args.overwrite:
        raise EvaluateError(f"{args.out} exists; pass --overwrite to replace it")
    items = _read_items(args)
    figures = None
    if args.figures:
        from rsvlm.inference.error_figures import ErrorFigures

        figures = ErrorFigures(args.figures, items, args.overwrite, args.categories)
    predictors, average, source = {}, args.average, {}
    if args.config:
        from rsvlm.inference.evaluate import ModelInput, ModelPredictor, load_model

        model, datamodule = load_model(args.config, args.ckpt)
        model = model.to(args.device)
        settings = ModelInput.from_datamodule(datamodule, overlap=args.overlap)
        if args.flips:
            settings = replace(settings, flips=tuple(args.flips))
        name = f"model ({Path(args.ckpt).name})"
        predictors[name] = ModelPredictor(model, settings, progress=not args.no_progress)
        if args.without_prior:
            predictors[f"{name} without its prior"] = ModelPredictor(
                model, settings, progress=not args.no_progress, prior=False
            )
        average = average or getattr(model, "metric_average", None) or "global"
        source = {
            "recipe": args.config,
            "checkpoint": args.ckpt,
            "normalization": settings.normalization,
            "flips": list(settings.flips),
        }
    predictors[BASELINE_NAME] = baseline_predictor
    rows = evaluate(items, predictors, average or "global", args.categories, args.skip_missing_bands, on_mask=figures)
    print(format_table(rows))
    if figures is not None:
        written = figures.write(progress=not args.no_progress)
        print(f"wrote {len(written)} figure(s) under {args.figures}", file=sys.stderr)
    if args.out:
        from rsvlm.io.atomic import atomic_write_text

        report = {**source, "average": average or "global", "rows": rows}
        atomic_write_text(Path(args.out), json.dumps(report, indent=1))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _read_items(args: argparse.Namespace):
    if args.real_data:
        from rsvlm.data.real import read_shipped

        return read_shipped(args.real_data, args.datasets)
    from rsvlm.data.real import read_labelled

    return read_labelled(args.images, args.masks, args.category, args.bands, args.positive)

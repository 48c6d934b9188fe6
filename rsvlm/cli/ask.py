"""``rsvlm ask MODEL IMAGE... --question TEXT --out FOLDER``: one question about each image, answered
by a trained model through :func:`rsvlm.load` (any system: SPEX tiles its scenes, GeoMag and
EarthGPT-X see whole images), written as ``rsvlm predict`` writes: the mask GeoTIFF with the
image's georeferencing, the overlay PNG and the answer JSON; the boxes the answer writes as
``<stem>.boxes.geojson`` in the image's CRS.

Visual prompts (for a model that reads them): ``--point X,Y[,LABEL]`` and ``--box X0,Y0,X1,Y1``
(repeatable), ``--scribble FILE`` (GeoJSON LineString / Polygon / Point, or a JSON list of
``[x, y]`` vertices) and ``--mask-prompt FILE`` (a mask raster on the image's grid or
georeferenced, or a GeoJSON polygon), in ``--coordinates pixel`` (default) or ``map`` (the
image's CRS; a GeoJSON naming another CRS is reprojected). They are drawn on the overlay. See
:mod:`rsvlm.inference.prompt_files`.
"""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    """The options of ``rsvlm ask``."""
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
    parser.add_argument(
        "--modality",
        default=None,
        choices=["optical", "sar", "infrared"],
        help="the images' modality, for models with per-modality stems (EarthGPT-X); default optical",
    )
    parser.add_argument(
        "--bands",
        default=None,
        metavar="NAMES",
        help="the images' bands in file order, a preset (sentinel2, naip, landsat8) or comma-separated names, "
        "for a tile model (SPEX) whose bands the files hold in another order or among others; "
        "default: each file's band descriptions when they are band names",
    )
    prompts = parser.add_argument_group("visual prompts (a model that reads them; each applies to every image)")
    prompts.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="X,Y[,LABEL]",
        help="a point (label 1 foreground, 0 background); negative numbers as --point=-5,3",
    )
    prompts.add_argument(
        "--box", action="append", default=[], metavar="X0,Y0,X1,Y1", help="a box (map: min x, min y, max x, max y)"
    )
    prompts.add_argument(
        "--scribble",
        action="append",
        default=[],
        metavar="FILE",
        help="GeoJSON (LineString: a stroke, Polygon: a painted region, Point) or a JSON list of [x, y] vertices",
    )
    prompts.add_argument(
        "--mask-prompt",
        action="append",
        default=[],
        metavar="FILE",
        help="a painted region: a mask raster (nonzero = inside) of the image's size or georeferenced, or GeoJSON",
    )
    prompts.add_argument(
        "--coordinates",
        default="pixel",
        choices=["pixel", "map"],
        help="pixel: x right, y down from the top-left corner; map: the image's CRS",
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <stem>.prob.tif: the mask probability (float32, NaN where there is no data)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")
    return parser


def ask_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from rsvlm.inference.prompt_files import parse_box, parse_point, place_prompts

    points = [(text, parse_point(text)) for text in args.point]
    boxes = [(text, parse_box(text)) for text in args.box]
    placed = []  # every prompt is placed (and every file read) before the model loads
    if points or boxes or args.scribble or args.mask_prompt:
        files = (args.scribble, args.mask_prompt, args.coordinates)
        placed = [place_prompts(image, points, boxes, *files) for image in args.images]
    import rsvlm

    model = rsvlm.load(args.model)
    options = {"granularity": args.granularity} if model.whole_image else {}
    if args.modality is not None:  # a tile model refuses it in one line (PredictError)
        options["modality"] = args.modality
    if args.bands is not None:  # a whole-image model refuses it in one line (PredictError)
        options["bands"] = args.bands
    if placed:  # prompts in each image's own pixels: one image at a time
        results = [
            model.predict(image, instruction=args.question, progress=True, **options, **prompts.arguments())
            for image, prompts in zip(args.images, placed, strict=True)
        ]
    else:
        results = model.predict(list(args.images), instruction=args.question, progress=True, **options)
    for result in results:
        files = result.save(args.out, overwrite=args.overwrite, probabilities=args.probabilities)
        boxes_note = f", boxes → {files['boxes']}" if "boxes" in files else ""
        print(f"{result.image}: {result.text!r} → {files['mask']}{boxes_note}")
    return 0

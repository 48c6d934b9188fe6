"""``rsvlm data build-spie | stats | generate | stack``: argparse entry points.

Each ``*_main(argv) -> int`` parses its own arguments, prints progress and a summary, and
returns a process exit code (0 success, 2 bad arguments or input). rsvlm's own errors
(:class:`~rsvlm.contracts.RsvlmError`) propagate to :func:`rsvlm.cli.main.main`, which prints
them as one line or, under ``--debug``, with their traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rsvlm.contracts import RsvlmError

_SOURCE_HELP = (
    "KIND:FOLDER:SPLIT:BANDS, e.g. gid15:/data/GID/train:train:gaofen2 or "
    "generated:/tmp/scenes:auto:demo. KIND is one of segmunich, chesapeake, globe230k, "
    "gid15, spacenet2, generated, or binary-<category> (binary-water, ...). SPLIT 'auto' takes "
    "splits from a generated folder's manifest. BANDS is a preset name or a comma-separated "
    "list of band names. Repeat --source for several sources."
)


def parse_source(text: str):
    """``KIND:FOLDER:SPLIT:BANDS`` → :class:`~rsvlm.data.spie.sources.SourceSpec`.

    FOLDER may itself contain ``:``; KIND is the first field and SPLIT, BANDS the last two.
    """
    from rsvlm.data.spie.sources import SourceSpec

    parts = text.split(":")
    if len(parts) < 4:
        raise argparse.ArgumentTypeError(f"--source {text!r}: expected {_SOURCE_HELP}")
    kind, folder, split, bands = parts[0], ":".join(parts[1:-2]), parts[-2], parts[-1]
    category = None
    if kind.startswith("binary-"):
        kind, category = "binary", kind[len("binary-") :]
    spec = SourceSpec(
        kind=kind, path=folder, split=None if split in ("", "auto") else split, bands=bands, category=category
    )
    try:
        spec.validate()
    except (ValueError, KeyError) as exc:
        raise argparse.ArgumentTypeError(f"--source {text!r}: {exc}") from exc
    return spec


def build_spie_main(argv: list[str]) -> int:
    """``rsvlm data build-spie --source KIND:FOLDER:SPLIT:BANDS ... --out DIR``."""
    p = argparse.ArgumentParser(
        prog="rsvlm data build-spie",
        description="Build SPIE records (JSON lines) with image tiles, binary masks, APG prompts and responses.",
    )
    p.add_argument("--source", action="append", required=True, type=parse_source, help=_SOURCE_HELP)
    p.add_argument("--out", required=True, help="output folder (records: OUT/spie.jsonl)")
    p.add_argument("--tile", type=int, default=512, help="tile side in pixels (default 512)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0: in this process; default 0)")
    p.add_argument("--style", choices=("paper", "released"), default="paper", help="APG attribute format")
    p.add_argument("--template", choices=("spectral", "plain"), default="spectral", help="instruction template")
    p.add_argument(
        "--empty-rate",
        type=float,
        default=None,
        help="share of absent (tile, category) pairs kept as empty-target records",
    )
    p.add_argument("--no-resume", action="store_true", help="start over instead of skipping finished tiles")
    p.add_argument("--llava-json", default=None, help="also export the records as the released SPEX LLaVA JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from rsvlm.data.spie.builder import EMPTY_TARGET_RATE, build_spie
    from rsvlm.data.spie.records import export_llava

    try:
        summary = build_spie(
            args.source,
            args.out,
            tile=args.tile,
            workers=args.workers,
            style=args.style,
            template=args.template,
            resume=not args.no_resume,
            progress=not args.no_progress,
            empty_rate=EMPTY_TARGET_RATE if args.empty_rate is None else args.empty_rate,
        )
    except RsvlmError:
        raise  # `rsvlm` prints it as one line (or with its traceback under --debug)
    except (ValueError, FileNotFoundError) as exc:
        print(f"rsvlm data build-spie: {exc}", file=sys.stderr)
        return 2
    print(summary)
    if args.llava_json:
        path = export_llava(summary.records_path, args.llava_json)
        print(f"LLaVA JSON: {path} ({summary.records_total} samples)")
    stats = Path(args.out) / "stats.json"
    if not stats.exists():
        print(f"next: rsvlm data stats --records {summary.records_path} --out {stats}")
    return 0


def stats_main(argv: list[str]) -> int:
    """``rsvlm data stats --records R --out stats.json``."""
    p = argparse.ArgumentParser(
        prog="rsvlm data stats",
        description="Per-band mean/std over valid pixels, keyed by band name, for SpieDataModule normalisation.",
    )
    p.add_argument("--records", required=True, help="SPIE records file (spie.jsonl)")
    p.add_argument("--out", default=None, help="output JSON (default: stats.json beside records)")
    p.add_argument(
        "--split", default="train", help="records of this split only ('all' for every record; default train)"
    )
    p.add_argument("--bands", default=None, help="band preset or comma-separated names (default: the records' bands)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from rsvlm.data.spie.records import read_records
    from rsvlm.data.stats import compute_band_stats, save_stats

    out = Path(args.out) if args.out else Path(args.records).parent / "stats.json"
    try:
        records = read_records(args.records)
        if args.split != "all":
            records = [r for r in records if r.split == args.split]
            if not records:
                raise ValueError(f"{args.records}: no records of split {args.split!r} (use --split all)")
        stats = compute_band_stats(records, args.bands, progress=not args.no_progress)
    except RsvlmError:
        raise  # `rsvlm` prints it as one line (or with its traceback under --debug)
    except (ValueError, FileNotFoundError) as exc:
        print(f"rsvlm data stats: {exc}", file=sys.stderr)
        return 2
    stats["source"] = str(args.records)
    stats["split"] = args.split
    save_stats(stats, out)
    print(f"{out}: statistics of {stats['images']} images")
    for name, s in stats["bands"].items():
        print(f"  {name:>12}  mean {s['mean']:.6g}  std {s['std']:.6g}  ({s['count']} px)")
    return 0


def generate_main(argv: list[str]) -> int:
    """``rsvlm data generate --out DIR --n 100 --size 256 --bands demo --seed 0``."""
    p = argparse.ArgumentParser(
        prog="rsvlm data generate",
        description="Write generated multispectral scenes (GeoTIFF image + "
        "class labels 0 soil, 1 vegetation, 2 water, "
        "3 building) and a manifest.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=100, help="number of scenes")
    p.add_argument("--size", type=int, default=256, help="scene side in pixels")
    p.add_argument("--bands", default="demo", help="band preset or comma-separated names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--splits", default="train=0.8,val=0.1,test=0.1", help="split shares, e.g. train=0.8,val=0.1,test=0.1"
    )
    args = p.parse_args(argv)

    from rsvlm.data.scenes import write_scene_folder

    try:
        fractions = {k: float(v) for k, v in (s.split("=") for s in args.splits.split(","))}
    except ValueError:
        print(f"rsvlm data generate: --splits {args.splits!r}: expected name=share,...", file=sys.stderr)
        return 2
    try:
        manifest = write_scene_folder(
            args.out, args.n, args.size, args.bands, seed=args.seed, split_fractions=fractions
        )
    except RsvlmError:
        raise  # `rsvlm` prints it as one line (or with its traceback under --debug)
    except ValueError as exc:
        print(f"rsvlm data generate: {exc}", file=sys.stderr)
        return 2
    import json

    scenes = json.loads(manifest.read_text())["scenes"]
    counts: dict[str, int] = {}
    for s in scenes:
        counts[s["split"]] = counts.get(s["split"], 0) + 1
    present = {c: sum(c in s["present"] for s in scenes) for c in ("vegetation", "water", "building")}
    print(
        f"{manifest}: {len(scenes)} scenes of {args.size}×{args.size}, splits {counts}, "
        f"scenes containing each category {present}"
    )
    print(
        f"next: rsvlm data build-spie --source generated:{args.out}:auto:{args.bands} "
        f"--out {Path(args.out).parent / 'spie'}"
    )
    return 0


def stack_main(argv: list[str]) -> int:
    """``rsvlm data stack B2.TIF B3.TIF B4.TIF B5.TIF --bands blue,green,red,nir --out scene.tif``."""
    from rsvlm.data.stack import RESAMPLINGS, write_stack

    p = argparse.ArgumentParser(
        prog="rsvlm data stack",
        description="Write one-file-per-band rasters (a Landsat scene's *_SR_B*.TIF, Sentinel-2's *_B*.jp2) "
        "as one GeoTIFF whose band descriptions are the band names, so that rsvlm predict reads the "
        "bands a model needs by name. The first file fixes the grid; files on another grid are resampled "
        "onto it. Pixels invalid in any band are masked.",
    )
    p.add_argument("files", nargs="+", help="single-band rasters, in the order of --bands")
    p.add_argument("--bands", required=True, help="band preset or comma-separated names, one per file")
    p.add_argument("--out", required=True, help="the GeoTIFF to write")
    p.add_argument(
        "--resampling",
        choices=RESAMPLINGS,
        default="bilinear",
        help="for files on another grid than the first (default bilinear)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        help="write value·scale + offset as float32 (NaN where not valid): Landsat C2 L2 SR 2.75e-5, "
        "Sentinel-2 L2A 1e-4",
    )
    p.add_argument(
        "--offset", type=float, default=0.0, help="added after --scale: Landsat C2 L2 SR -0.2, Sentinel-2 L2A -0.1"
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    summary = write_stack(
        args.files,
        args.bands,
        args.out,
        args.resampling,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        scale=args.scale,
        offset=args.offset,
    )
    print(
        f"{summary.path}: {len(summary.bands)} bands ({', '.join(summary.bands)}), "
        f"{summary.height}×{summary.width}, {summary.dtype}"
    )
    for path in summary.resampled:
        print(f"  {path}: resampled onto the grid of {args.files[0]} ({args.resampling})")
    return 0

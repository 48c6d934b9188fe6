"""SPIE builder throughput (patches/s) on generated 512×512 scenes, for 1 and 2 workers.

    python benchmarks/spie_builder_speed.py [--n 48] [--size 512] [--bands demo] [--workers 0 1 2]

Scenes are written once (not timed); each run builds all of them into a fresh folder with the
default offline describer. A "patch" is one 512×512 tile (image tile + its masks + records);
records per second are also shown (one per category present, plus empty-target records).
Times include process-pool start-up, which is what a user waits for.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

from rsvlm.data.scenes import write_scene_folder
from rsvlm.data.spie.builder import build_spie
from rsvlm.data.spie.sources import SourceSpec


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=48, help="scenes (= patches)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--bands", default="demo")
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="worker counts to time (0: in the main process, no pool)",
    )
    p.add_argument("--style", choices=("paper", "released"), default="paper")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        scenes = Path(tmp) / "scenes"
        write_scene_folder(scenes, args.n, args.size, args.bands, seed=0)
        rows = []
        for w in args.workers:
            s = build_spie(
                [SourceSpec("generated", str(scenes))],
                Path(tmp) / f"out{w}",
                tile=args.size,
                workers=w,
                style=args.style,
                progress=False,
            )
            rows.append((w, s.tiles_built, s.records_total, s.seconds))
    print(
        f"SPIE builder, {args.n} generated {args.size}×{args.size} scenes, bands "
        f"{args.bands}, APG style {args.style}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| workers | patches | records | seconds | patches/s | records/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for w, tiles, recs, sec in rows:
        print(f"| {w} | {tiles} | {recs} | {sec:.2f} | {tiles / sec:.2f} | {recs / sec:.2f} |")


if __name__ == "__main__":
    main()

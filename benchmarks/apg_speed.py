"""APG speed: time per 512×512 4-band patch, single thread, both prompt styles.

Measures :func:`rsvlm.data.spie.apg.spectral_prompt` end to end (index, Otsu over valid pixels,
connected regions, attributes of the ≤ 10 largest regions, text) and, separately, its
:func:`~rsvlm.data.spie.apg.region_attributes` part, on

* generated scenes (``rsvlm.data.scenes.generate_scene``, Gaofen-2 bands B, G, R, NIR);
* real Chesapeake NAIP patches (R, G, B, NIR, 256² upsampled ×2 by pixel repetition);
* the real Sen1Floods11 Sentinel-2 chip (its B, G, R, NIR bands, 512² native).

Prints a markdown table of the median (and 90th percentile) over ``--repeats`` runs.
Threads are pinned to one (OpenMP / MKL / OpenBLAS / OpenCV) and torch is not imported.

Usage: python benchmarks/apg_speed.py [--repeats 30] [--data ../shared/data]
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from rsvlm.data.indices import coarse_mask  # noqa: E402
from rsvlm.data.raster import read_raster  # noqa: E402
from rsvlm.data.spie.apg import region_attributes, spectral_prompt  # noqa: E402

cv2.setNumThreads(1)
REPO = Path(__file__).resolve().parents[1]


def generated_patches(n: int) -> list[tuple[str, np.ndarray, str, np.ndarray | None]]:
    from rsvlm.data.scenes import generate_scene

    rng = np.random.default_rng(0)
    return [(f"generated #{i}", generate_scene(512, "gaofen2", rng)[0], "gaofen2", None) for i in range(n)]


def real_patches(data: Path) -> list[tuple[str, np.ndarray, str, np.ndarray | None]]:
    out = []
    for p in sorted((data / "chesapeake-naip-geobench").glob("*_image.npy"))[:3]:
        img = np.load(p).astype(np.float32) / 255.0
        img = np.repeat(np.repeat(img, 2, axis=1), 2, axis=2)  # 256² → 512²
        out.append((f"Chesapeake {p.stem.removesuffix('_image')} (×2)", img, "chesapeake", None))
    s2 = data / "sen1floods11-spain" / "Spain_7370579_S2Hand.tif"
    if s2.exists():
        r = read_raster(s2, "sentinel2")
        img = np.stack([r.band(b) for b in ("blue", "green", "red", "nir")])
        out.append(("Sen1Floods11 S2 (B,G,R,NIR)", img, "gaofen2", r.valid))
    return out


def timeit(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up (imports, caches)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3), float(np.percentile(ts, 90) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--generated", type=int, default=3, help="number of generated scenes")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()

    patches = generated_patches(args.generated)
    if args.data.is_dir():
        patches += real_patches(args.data)
    else:
        print(f"(real data not found at {args.data}; generated scenes only)")

    print(f"APG time per 512×512 4-band patch, single thread, median (p90) of {args.repeats} runs")
    print(
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"NumPy {np.__version__}, OpenCV {cv2.__version__}\n"
    )
    print("| patch | category | regions | style | spectral_prompt ms | region_attributes ms |")
    print("|---|---|---:|---|---:|---:|")
    worst = 0.0
    for name, img, bands, valid in patches:
        assert img.shape == (4, 512, 512), img.shape
        for cat in ("vegetation", "water"):
            mask = coarse_mask(img, cat, bands, valid)
            n_regions = len(region_attributes(mask, max_regions=10**9)) if mask.any() else 0
            for style in ("paper", "released"):
                full = timeit(lambda: spectral_prompt(img, cat, bands, style=style, valid=valid), args.repeats)
                attrs = timeit(lambda: region_attributes(mask, style=style), args.repeats)
                worst = max(worst, full[0])
                print(
                    f"| {name} | {cat} | {n_regions} | {style} | {full[0]:.1f} ({full[1]:.1f}) "
                    f"| {attrs[0]:.1f} ({attrs[1]:.1f}) |"
                )
    print(f"\nslowest median: {worst:.1f} ms per patch (target < 20 ms); torch imported: {'torch' in sys.modules}")


if __name__ == "__main__":
    main()

"""Prompted extraction: does the model segment the region a prompt marks, beyond what the prompt
alone or the whole category would give?

For each prompted sample of a split (``recipes/spex-demo-prompts.yaml``: one region of the target
marked by a point, a box or a scribble) it scores, over the split (one confusion matrix per row):

* the model: generate, decode with the prompt (the paper's inference);
* the prompt as the mask: the box filled, the point as a disc of radius 3, the scribble drawn
  (``rsvlm.prompts.geometry.rasterize``): what a model that only copies the prompt gets;
* the whole category: the reference mask of every region of the category: what a model that
  ignores the prompt and extracts the land cover perfectly gets.

    python benchmarks/prompted_extraction.py --run runs/spex-demo-prompts [--split val]

prints one table, rows per method, columns F1 / Recall / Precision / IoU for all prompts and F1
per kind. Choose settings on ``val``; ``test`` is read once, to report.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch


def main(argv: list[str] | None = None) -> None:
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    import rsvlm
    from rsvlm.contracts import PROMPT_KINDS
    from rsvlm.prompts.geometry import rasterize
    from rsvlm.training.metrics import BinarySegmentationMetrics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder of a prompted recipe")
    parser.add_argument("--split", default="val", choices=["val", "test"])
    args = parser.parse_args(argv)

    predictor = rsvlm.load(args.run)
    model, datamodule = predictor.model, predictor.datamodule
    datamodule.prepare_data()
    datamodule.setup("validate" if args.split == "val" else "test")
    datamodule.set_text_formatter(predictor.formatter)
    dataset = datamodule.datasets[args.split]
    samples = [(i, dataset[i]) for i in range(len(dataset))]  # each sample read once
    prompted = [
        s | {"category_mask": dataset.base[i]["mask"]} for i, s in samples if s["task"] == datamodule.prompts.task
    ]
    scores: dict[tuple[str, str], BinarySegmentationMetrics] = defaultdict(BinarySegmentationMetrics)
    kind_names = {code: name for name, code in PROMPT_KINDS.items()}
    loader = DataLoader(
        prompted,
        batch_size=datamodule.batch_size,
        collate_fn=lambda samples: {
            **datamodule.collate_fn()(samples),
            "category_mask": torch.stack([s["category_mask"] for s in samples]),
        },
    )
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in tqdm(loader, desc=f"prompted {args.split}"):
            out = model.predict_masks(move_data_to_device(batch, device))
            prompts = batch["visual_prompts"]  # one prompt per sample, in slot 0
            drawn = rasterize(prompts, point_radius=3)
            kinds = [kind_names[int(k)] for k in prompts.kind[:, 0]]
            guesses = {
                "model": out["mask_logits"].cpu(),
                "prompt as the mask": drawn[:, :1] * 2 - 1,
                "whole category": batch["category_mask"] * 2 - 1,
            }
            for method, logits in guesses.items():
                for i, kind in enumerate(kinds):
                    for key in ("all", kind):
                        scores[(method, key)].update(
                            logits[i : i + 1], batch["mask"][i : i + 1], batch["valid"][i : i + 1]
                        )
    kinds = sorted({k for _, k in scores} - {"all"})
    print(f"prompted extraction, {args.split} split, {len(prompted)} samples ({args.run})")
    print("| method | F1 | Recall | Precision | IoU | " + " | ".join(f"F1 {k}" for k in kinds) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(kinds))
    for method in ("model", "prompt as the mask", "whole category"):
        total = scores[(method, "all")].compute()
        cells = [f"{float(total[m]):.3f}" for m in ("F1", "Recall", "Precision", "IoU")]
        cells += [f"{float(scores[(method, k)].compute()['F1']):.3f}" for k in kinds]
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""The README.md (model card) of an exported model folder, Hugging Face Hub style."""

from __future__ import annotations

from typing import Any

METRIC_ORDER = ("F1", "Recall", "Precision", "OA", "IoU")


def _component_rows(model: Any) -> list[str]:
    rows = []
    for name, module in model.named_children():
        if name in ("positions",) or not sum(1 for _ in module.parameters()):
            continue
        params = sum(p.numel() for p in module.parameters())
        rows.append(f"| {name} | `{type(module).__name__}` | {params / 1e6:.2f} M |")
    return rows


def _metric_rows(metrics: dict[str, Any]) -> list[str]:
    rows = []
    for split in ("test", "test_teacher_forced"):
        values = [metrics.get(f"{split}/{m}") for m in METRIC_ORDER]
        if any(v is not None for v in values):
            cells = " | ".join("" if v is None else f"{float(v):.3f}" for v in values)
            rows.append(f"| {split} | {cells} |")
    return rows


def model_card(marker: dict[str, Any], recipe: dict[str, Any], model: Any) -> str:
    """Markdown with YAML front matter: system, inputs, training data, metrics, use and limits."""
    categories = marker.get("categories") or ["vegetation", "water", "building"]
    metrics = marker.get("metrics") or {}
    bases = (marker.get("trained_only") or {}).get("frozen_bases", {})
    lines = [
        "---",
        "library_name: rsvlm",
        "tags: [remote-sensing, vision-language, segmentation, multispectral]",
        "pipeline_tag: image-segmentation",
        "---",
        "",
        f"# {marker.get('model_class', 'rsvlm model').rsplit('.', 1)[-1]} ({', '.join(categories)})",
        "",
        "A vision-language land-cover extractor exported by `rsvlm export`: given a multispectral image "
        "and a category it generates a description of the category's regions and decodes their mask.",
        "",
        "## Use",
        "",
        "```python",
        "import rsvlm",
        "model = rsvlm.load('THIS_FOLDER')",
        f"result = model.predict('scene.tif', category='{categories[0]}')",
        "result.save('out/')   # mask GeoTIFF, overlay PNG, answer JSON",
        "```",
        "",
        "## Inputs",
        "",
        f"- bands, in order: {', '.join(marker['bands'])} (read by name from a GeoTIFF's band descriptions, "
        "or name its bands: `predict(..., bands='sentinel2')`)",
        f"- normalisation: `{marker['normalization']}`"
        + (f", plus index channels {', '.join(marker['index_channels'])}" if marker.get("index_channels") else ""),
        f"- tiles of {marker['tile']} px; larger images are tiled with overlap and stitched",
        "",
        "## Components",
        "",
        "| component | class | parameters |",
        "|---|---|---:|",
        *_component_rows(model),
        "",
    ]
    if bases:
        lines += [
            "Frozen bases not stored here (built from their sources when loading):",
            "",
            *[f"- {name}: `{b.get('source')}`" for name, b in bases.items()],
            "",
        ]
    lines += ["## Training data", ""]
    source = marker.get("training_data")
    lines.append(
        "Generated multispectral scenes (`rsvlm.data.generated`), not real imagery."
        if source == "generated scenes"
        else f"SPIE records: `{source}`."
        if source
        else "See the run the checkpoint came from."
    )
    lines += ["", f"Source checkpoint: `{marker.get('source_checkpoint')}`", ""]
    metric_rows = _metric_rows(metrics)
    if metric_rows:
        lines += [
            f"## Metrics (run record; averaging: {metrics.get('metric_average', 'global')})",
            "",
            "| split | " + " | ".join(METRIC_ORDER) + " |",
            "|---|" + "---:|" * len(METRIC_ORDER),
            *metric_rows,
            "",
        ]
    lines += [
        "## Intended use and limits",
        "",
        "- Research on vision-language land-cover extraction; not validated for operational mapping.",
        "- Scores hold for data like the training data; on other sensors, regions and seasons measure first "
        "(`rsvlm evaluate` scores it and the spectral-index baseline on your labelled images).",
        "- The generated description is a by-product; the mask is the output to rely on.",
        "",
    ]
    return "\n".join(lines)

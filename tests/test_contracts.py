"""Every component of ``tests/catalogue.py``: builds, runs forward and backward on a tiny input
of its kind, returns the widths it declares, builds on the meta device; and every public
component of rsvlm is in the catalogue."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import pkgutil

import pytest
import torch
from catalogue import BANDS, CATALOGUE, FUSED, INTERNAL_BLOCKS, PYRAMID_CHANNELS, PYRAMID_REDUCTIONS, class_of
from torch import nn

from rsvlm.contracts import (
    PROMPT_KINDS,
    Bridge,
    Encoder,
    FusedFeatures,
    Fusion,
    MaskDecoder,
    PromptEncoder,
    VisualPromptBatch,
)
from rsvlm.crops.magcrop import MagCrop
from rsvlm.data.modalities import MODALITY_IDS
from rsvlm.encoders.modality_stem import MultiSourceStem
from rsvlm.fusion.hybrid_prompt import HybridPromptFusion
from rsvlm.fusion.projector import MLPProjector
from rsvlm.fusion.single_scale import SingleScaleFusion
from rsvlm.fusion.token_fusion import TokenFusion
from rsvlm.fusion.views import ViewTiler
from rsvlm.heads.granularity import TaskGranularityClassifier
from rsvlm.heads.upernet import UperNetSegHead

COMPONENT_PACKAGES = (
    "rsvlm.encoders",
    "rsvlm.fusion",
    "rsvlm.bridges",
    "rsvlm.heads",
    "rsvlm.llm",
    "rsvlm.prompts",
    "rsvlm.crops",
)
BATCH, IMAGE = 2, 64


def public_modules() -> dict[str, type]:
    """``module.Class`` → class for every public ``nn.Module`` subclass defined in a component package."""
    found: dict[str, type] = {}
    for package_name in COMPONENT_PACKAGES:
        if importlib.util.find_spec(package_name) is None:
            continue  # a kind of component that has no code yet
        package = importlib.import_module(package_name)
        names = [package_name] + [m.name for m in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}.")]
        for module_name in names:
            module = importlib.import_module(module_name)
            for class_name, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module_name and not class_name.startswith("_") and issubclass(cls, nn.Module):
                    found[f"{module_name}.{class_name}"] = cls
    return found


def missing_from_catalogue(names: list[str]) -> list[str]:
    """Paths of the public components (less :data:`INTERNAL_BLOCKS`) that no name in ``names`` covers."""
    catalogued = {class_of(name) for name in names}
    return sorted(
        path for path, cls in public_modules().items() if path not in INTERNAL_BLOCKS and cls.__name__ not in catalogued
    )


def test_every_public_component_is_in_the_catalogue() -> None:
    missing = missing_from_catalogue(list(CATALOGUE))
    assert not missing, (
        f"public components missing from tests/catalogue.py: {missing}. Add a tiny builder to CATALOGUE "
        "(or, for a building block that no recipe names, its path to INTERNAL_BLOCKS with the reason)"
    )
    # names are how the catalogue refers to classes: they must be unambiguous and real
    public = public_modules()
    names = [cls.__name__ for path, cls in public.items() if path not in INTERNAL_BLOCKS]
    assert len(names) == len(set(names)), f"two public components share a class name: {sorted(names)}"
    stale = sorted({class_of(name) for name in CATALOGUE} - set(names))
    assert not stale, f"catalogue entries name no public component: {stale}"
    gone = sorted(INTERNAL_BLOCKS - set(public))
    assert not gone, f"INTERNAL_BLOCKS names classes that no longer exist: {gone}"


def test_a_component_left_out_of_the_catalogue_is_reported() -> None:
    without_msam = [name for name in CATALOGUE if class_of(name) != "MSAM"]
    assert missing_from_catalogue(without_msam) == ["rsvlm.fusion.msam.MSAM"]


# ---------------------------------------------------------------------------- tiny inputs
def pyramid(channels: list[int], reductions: list[int], requires_grad: bool = True) -> list[torch.Tensor]:
    """Maps ``B×channels[i]×IMAGE/r_i×IMAGE/r_i``."""
    return [
        torch.randn(BATCH, c, IMAGE // r, IMAGE // r, requires_grad=requires_grad)
        for c, r in zip(channels, reductions, strict=True)
    ]


def positions(length: int, count: int) -> torch.Tensor:
    """``B×length`` bool with ``count`` True per sample, at different places per sample."""
    mask = torch.zeros(BATCH, length, dtype=torch.bool)
    for b in range(BATCH):
        mask[b, torch.randperm(length)[:count]] = True
    return mask


def run_encoder(encoder: Encoder) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    image = torch.randn(BATCH, encoder.in_bands, IMAGE, IMAGE, requires_grad=True)
    maps = encoder(image)
    assert len(maps) == len(encoder.channels) == len(encoder.reductions)
    for level, (feature, width, r) in enumerate(zip(maps, encoder.channels, encoder.reductions, strict=True)):
        assert tuple(feature.shape) == (BATCH, width, IMAGE // r, IMAGE // r), f"level {level}"
    return maps, [image]


def run_fusion(fusion: Fusion) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    maps = pyramid(fusion.in_channels, PYRAMID_REDUCTIONS)
    out = fusion(maps)
    assert isinstance(out, FusedFeatures)
    side = IMAGE // fusion.out_reduction
    assert tuple(out.map.shape) == (BATCH, fusion.out_channels, side, side)
    tokens = math.ceil(side / fusion.token_pool) ** 2
    assert tuple(out.tokens.shape) == (BATCH, tokens, fusion.out_channels)
    # the single-scale ablation reads one level by design: only that one gets a gradient
    read = [maps[fusion.level]] if isinstance(fusion, (SingleScaleFusion, TokenFusion)) else maps
    return [out.map, out.tokens], read


def run_projector(projector: MLPProjector) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    tokens = torch.randn(BATCH, 5, projector.in_dim, requires_grad=True)
    out = projector(tokens)
    assert tuple(out.shape) == (BATCH, 5, projector.out_dim)
    return [out], [tokens]


def run_bridge(bridge: Bridge) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    hidden = torch.randn(BATCH, 9, bridge.in_dim, requires_grad=True)
    out = bridge(hidden, positions(9, bridge.num_tokens))
    # K prompt tokens: the positions read, or fewer when the bridge fuses them (SegCodebookBridge: 1)
    assert tuple(out.shape) == (BATCH, getattr(bridge, "out_tokens", bridge.num_tokens), bridge.out_dim)
    return [out], [hidden]


def run_decoder(decoder: MaskDecoder) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if isinstance(decoder.in_channels, list):  # reads an FPN (SAM 2's strides 4, 8, 16)
        feature_map = pyramid(decoder.in_channels, [4, 8, 16])
    else:
        feature_map = torch.randn(BATCH, decoder.in_channels, 8, 8, requires_grad=True)
    prompts = torch.randn(BATCH, 2, decoder.prompt_dim, requires_grad=True)
    if decoder.reads_batch:  # the input image (a coarse mask in its last band) and each sample's category
        image = (torch.rand(BATCH, BANDS, IMAGE, IMAGE) > 0.5).float()
        out = decoder(feature_map, prompts, (IMAGE, IMAGE), batch={"image": image, "category": ["water"] * BATCH})
    else:
        out = decoder(feature_map, prompts, (IMAGE, IMAGE))
    assert tuple(out.shape) == (BATCH, 1, IMAGE, IMAGE)
    maps = feature_map if isinstance(feature_map, list) else [feature_map]
    return [out], [*maps, prompts]


def run_seg_head(head: UperNetSegHead) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    maps = pyramid(head.in_channels, PYRAMID_REDUCTIONS)
    out = head(maps)
    assert tuple(out.shape) == (BATCH, head.num_classes, IMAGE // PYRAMID_REDUCTIONS[0], IMAGE // PYRAMID_REDUCTIONS[0])
    return [out], maps


def run_llm(llm: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    vocab = llm.model.get_input_embeddings().weight.shape[0]
    length, visual = 7, 3
    ids = torch.randint(0, vocab, (BATCH, length))
    ids[ids == llm.image_token_id] = 0
    ids[:, 2] = llm.image_token_id  # one image placeholder per sample
    tokens = torch.randn(BATCH, visual, llm.hidden_size, requires_grad=True)
    out = llm(ids, torch.ones_like(ids), visual_tokens=tokens)
    spliced = length + visual - 1
    assert tuple(out.hidden_states.shape) == (BATCH, spliced, llm.hidden_size)
    assert tuple(out.logits.shape) == (BATCH, spliced, vocab)
    return [out.hidden_states, out.logits], [tokens]


def run_view_tiler(tiler: ViewTiler) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    image = torch.randn(BATCH, BANDS, tiler.input_size, tiler.input_size, requires_grad=True)
    views = tiler.split(image)
    assert tuple(views.shape) == (tiler.num_views * BATCH, BANDS, tiler.view_size, tiler.view_size)
    tokens = torch.randn(tiler.num_views * BATCH, 3, tiler.dim, requires_grad=True)
    merged = tiler.merge(tokens)
    assert tuple(merged.shape) == (BATCH, tiler.num_views * 3 + tiler.extra_tokens, tiler.dim)
    return [views, merged], [image, tokens]


def visual_prompts() -> VisualPromptBatch:
    """Per sample a point, a box and an empty slot on an ``IMAGE``×``IMAGE`` image."""
    kind = torch.tensor([[PROMPT_KINDS["point"], PROMPT_KINDS["box"], PROMPT_KINDS["empty"]]] * BATCH)
    points = torch.zeros(BATCH, 3, 1, 2)
    points[:, 0, 0] = torch.tensor([[10.5, 20.5], [50.0, 7.25]])
    boxes = torch.zeros(BATCH, 3, 4)
    boxes[:, 0] = points[:, 0, 0].repeat(1, 2)  # a point's box is the point
    boxes[:, 1] = torch.tensor([[8.0, 12.0, 40.0, 30.0], [0.0, 33.0, 64.0, 64.0]])
    return VisualPromptBatch(
        kind=kind,
        points=points,
        npoints=(kind == PROMPT_KINDS["point"]).long(),
        boxes=boxes,
        labels=torch.ones(BATCH, 3, dtype=torch.long),
        image_size=(IMAGE, IMAGE),
    )


def run_prompt_encoder(encoder: PromptEncoder) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    prompts = visual_prompts()
    assert encoder.max_prompts >= prompts.slots
    if encoder.mode == "inline":  # reads the image's fused map
        fused = torch.randn(BATCH, FUSED, IMAGE // 8, IMAGE // 8, requires_grad=True)
        out = encoder(prompts, FusedFeatures.from_map(fused))
        # one group per valid slot, spliced at the sample's k-th placeholder
        assert [group.shape[0] for group in out] == prompts.valid.sum(1).tolist()
        assert all(group.ndim == 3 and group.shape[2] == encoder.out_dim for group in out)
        return list(out), [fused]
    out = encoder(prompts)
    assert out.ndim == 3 and out.shape[0] == BATCH and out.shape[2] == encoder.out_dim
    if encoder.mode == "dense":  # one token per cell of the image's token grid
        assert out.shape[1] == encoder.num_tokens
    return [out], []


def run_prompt_fusion(fusion: HybridPromptFusion) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    image, prompt = (torch.randn(BATCH, 4, fusion.dim, requires_grad=True) for _ in range(2))
    out = fusion(image, prompt, torch.tensor([True] + [False] * (BATCH - 1)))  # one unprompted sample
    assert out.shape == image.shape
    return [out], [image, prompt]


def run_stem(stem: MultiSourceStem) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    image = torch.randn(BATCH, stem.in_bands, IMAGE, IMAGE, requires_grad=True)
    ids = [MODALITY_IDS[name] for name in stem.specs]
    out = stem(image, torch.tensor([ids[b % len(ids)] for b in range(BATCH)]))  # one batch mixes modalities
    assert tuple(out.shape) == (BATCH, stem.out_bands, IMAGE, IMAGE)
    return [out], [image]


def run_mask_encoder(encoder: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A ``mask_encoder`` (the VLM hands its one map to the decoder as is): ``B×out_channels×s/r×s/r``,
    s its square input side (SAM pads to it)."""
    image = torch.randn(BATCH, encoder.in_bands, IMAGE, IMAGE, requires_grad=True)
    side = getattr(encoder, "image_size", IMAGE) // encoder.reduction
    out = encoder(image)
    assert tuple(out.shape) == (BATCH, encoder.out_channels, side, side)
    return [out], [image]


def run_cropper(cropper: MagCrop) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    image = torch.randn(BATCH, BANDS, IMAGE, IMAGE, requires_grad=True)
    boxes = [[(4, 8, 40, 44)], [(10, 6, 50, 46), (5, 5, 25, 25)]]  # b₂ in b₁'s frame
    out = cropper(image, {"granularity": ["region", "pixel"], "magcrop_boxes": boxes})
    assert out.shape == image.shape  # the geometry is kept
    return [out], [image]


def run(component: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Forward on a tiny input of the component's kind, checking the declared widths;
    returns (outputs, inputs that should receive gradients)."""
    if isinstance(component, PromptEncoder):
        return run_prompt_encoder(component)
    if isinstance(component, Encoder):
        assert component.in_bands == BANDS
        return run_encoder(component)
    if isinstance(component, Fusion):
        assert component.in_channels == PYRAMID_CHANNELS
        return run_fusion(component)
    if isinstance(component, Bridge):
        return run_bridge(component)
    if isinstance(component, MaskDecoder):
        return run_decoder(component)
    if isinstance(component, MLPProjector):
        return run_projector(component)
    if isinstance(component, UperNetSegHead):
        return run_seg_head(component)
    if hasattr(component, "hidden_size") and hasattr(component, "image_token_id"):
        return run_llm(component)
    if all(hasattr(component, f) for f in ("in_bands", "out_channels", "reduction")):
        return run_mask_encoder(component)
    if isinstance(component, MultiSourceStem):
        return run_stem(component)
    if isinstance(component, HybridPromptFusion):
        return run_prompt_fusion(component)
    if isinstance(component, ViewTiler):
        return run_view_tiler(component)
    if isinstance(component, MagCrop):
        return run_cropper(component)
    if isinstance(component, TaskGranularityClassifier):
        logits = component(["Please segment the ship.", "Describe the image."])
        assert tuple(logits.shape) == (2, len(component.labels))
        return [logits], []
    raise AssertionError(f"test_contracts has no tiny input for {type(component).__name__}: add a run_<kind>")


# ---------------------------------------------------------------------------- the checks
@pytest.mark.parametrize("name", list(CATALOGUE))
def test_builds_runs_forward_and_backward_with_declared_widths(name: str) -> None:
    torch.manual_seed(0)
    component = CATALOGUE[name]().train()
    assert type(component).__name__ == class_of(name), f"{name} builds a {type(component).__name__}"
    outputs, inputs = run(component)
    sum(out.float().square().mean() for out in outputs).backward()
    for i, tensor in enumerate(inputs):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all(), f"input {i} got no finite gradient"
    trained = [p for p in component.parameters() if p.requires_grad]
    if trained:  # a frozen component passes gradients to its input and keeps none itself
        grads = [p.grad for p in trained if p.grad is not None]
        assert grads, f"{name}: no trainable parameter received a gradient"
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_builds_on_the_meta_device(name: str) -> None:
    with torch.device("meta"):
        component = CATALOGUE[name]()
    tensors = [*component.parameters(), *component.buffers()]
    assert tensors or getattr(component, "parameter_free", False), f"{name} has no parameters"
    off_meta = [t.shape for t in tensors if t.device.type != "meta"]
    assert not off_meta, f"{name} allocated real tensors on the meta device: {off_meta[:5]}"

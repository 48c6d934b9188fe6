"""Every shipped recipe and every sweep cell (and every run a sweep needs) parses with the
`rsvlm` command's parser; a misspelt key fails at parse time naming it; every paper-scale cell
builds on the meta device and its vision path runs at the recipe's image size; the paper
sweeps run MVPNet → stage 1 → stage 2."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from torch import nn

from rsvlm.cli.lightning import run_lightning_cli
from rsvlm.experiments.summarize import build_model_on_meta, summarize_main
from rsvlm.experiments.sweep import expand_grid, load_sweep, resolve_config
from rsvlm.experiments.sweep.needs import plan_needs
from rsvlm.io.recipe_errors import RecipeError

RECIPES = REPO / "recipes"


def is_sweep(path: Path) -> bool:
    return "base" in (yaml.safe_load(path.read_text()) or {})


SWEEPS = sorted([*(RECIPES / "ablations").glob("*/*.yaml"), *filter(is_sweep, RECIPES.glob("*.yaml"))])
PAPER_SWEEPS = [p for p in SWEEPS if not p.stem.endswith("-demo")]
#: Paper sweeps over SPEX: the MVPNet → stage 1 → stage 2 chain of the SPEX paper.
SPEX_PAPER_SWEEPS = [p for p in PAPER_SWEEPS if Path(yaml.safe_load(p.read_text())["base"]).name == "spex.yaml"]


def print_config(config: Path) -> dict:
    """Parse ``config`` like ``rsvlm fit --config CONFIG --print_config`` and return the result."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None), out.getvalue()
    return yaml.safe_load(out.getvalue())


def sweep_configs(sweep: Path, out: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """(need run name -> resolved config, cell name -> resolved config), tokens replaced."""
    spec = load_sweep(sweep, out=out)
    plan = plan_needs(spec, expand_grid(spec))
    needs = {nr.name: resolve_config(nr.need.recipe, nr.overrides) for nr in plan.need_runs}
    cells = {run.name: resolve_config(spec.base, run.overrides) for run in plan.cells}
    return needs, cells


@pytest.mark.parametrize("recipe", sorted(p for p in RECIPES.glob("*.yaml") if not is_sweep(p)), ids=lambda p: p.name)
def test_recipe_parses(recipe: Path):
    parsed = print_config(recipe)
    source = yaml.safe_load(recipe.read_text())
    assert parsed["model"]["class_path"] == source["model"]["class_path"]
    assert parsed["data"]["class_path"] == source["data"]["class_path"]


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.name)
def test_every_sweep_cell_and_need_parses(sweep: Path, tmp_path: Path):
    """Each cell and need run of the sweep parses as `rsvlm fit` parses it; cells that differ only
    in ``seed_everything`` (an int, parsed in the first of them) are parsed once."""
    needs, cells = sweep_configs(sweep, tmp_path)
    parsed: set[str] = set()
    for name, config in {**needs, **cells}.items():
        unseeded = yaml.safe_dump({k: v for k, v in config.items() if k != "seed_everything"})
        if unseeded in parsed:
            continue
        parsed.add(unseeded)
        path = tmp_path / "configs" / f"{len(name)}-{abs(hash(name))}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        print_config(path)


# ----------------------------------------------------------------------- the paper's pipeline


def _model_args(config: dict) -> dict:
    return config["model"].get("init_args") or {}


def _checkpoint_dir(config: dict) -> str | None:
    """Where the recipe's ModelCheckpoint writes (its ``dirpath``)."""
    for callback in config["trainer"].get("callbacks") or []:
        if callback["class_path"].endswith("ModelCheckpoint"):
            return (callback.get("init_args") or {}).get("dirpath")
    return None


def test_paper_recipe_runs_stage1_then_stage2_from_mvpnet():
    spex = yaml.safe_load((RECIPES / "spex.yaml").read_text())
    mvpnet = yaml.safe_load((RECIPES / "mvpnet.yaml").read_text())
    args = _model_args(spex)
    assert [phase["stage"] for phase in args["schedule"]] == ["text", "mask"]
    assert sum(phase["epochs"] for phase in args["schedule"]) == spex["trainer"]["max_epochs"]
    # encoder_init is the last checkpoint that the MVPNet recipe's own run writes
    assert Path(args["encoder_init"]) == Path(_checkpoint_dir(mvpnet)) / "last.ckpt"


def test_summarize_shows_stage1_then_stage2_and_the_mvpnet_init(capsys):
    """`rsvlm summarize` on the paper recipe: the MVPNet start, then the stages in the recipe's
    order with one table each; the paper freezes the LLM in stage 2 and adds TCP + decoder."""
    assert summarize_main(["--config", str(RECIPES / "spex.yaml")]) == 0
    out = capsys.readouterr().out
    args = _model_args(yaml.safe_load((RECIPES / "spex.yaml").read_text()))
    assert f"encoder starts from the MVPNet visual pre-training: encoder_init = {args['encoder_init']}" in out
    assert "order: stage 1 'text' → stage 2 'mask'" in out
    # the paper's per-image metrics and decoding (Sec. IV-E), read back from the recipe
    assert args["metric_average"] == "image" and "metrics: mean of per-image scores" in out
    g = args["generation"]
    assert (g["do_sample"], g["temperature"], g["top_p"], g["repetition_penalty"]) == (True, 0.3, 0.9, 1.1)
    assert f"sampling at temperature 0.3, top-p 0.9, repetition penalty 1.1, seed {g['seed']}" in out
    tables = out.split("spex.yaml, stage ")[1:]
    assert [t.split(",")[0] for t in tables] == ["1 'text'", "2 'mask'"]

    def trainable(table: str, component: str) -> str:
        row = next(line for line in table.splitlines() if line.startswith(f"| {component} |"))
        return row.split("|")[4].strip()

    assert trainable(tables[0], "llm") != "0" and trainable(tables[1], "llm") == "0"
    assert trainable(tables[0], "bridge") == "0" and trainable(tables[1], "bridge") != "0"


@pytest.mark.parametrize("sweep", SPEX_PAPER_SWEEPS, ids=lambda p: p.name)
def test_paper_sweeps_run_mvpnet_then_stage1_then_stage2(sweep: Path, tmp_path: Path):
    """Every SPEX cell trains stage "mask" from a stage-1 ("text") checkpoint of this sweep,
    whose encoder starts from the MVPNet run (but the pretraining sweep's other inits)."""
    spec = load_sweep(sweep, out=tmp_path)
    plan = plan_needs(spec, expand_grid(spec))
    mvpnet = {nr.need.name: nr for nr in plan.need_runs}["mvpnet"]
    assert mvpnet.need.recipe == RECIPES / "mvpnet.yaml"
    mvpnet_config = resolve_config(mvpnet.need.recipe, mvpnet.overrides)
    # the need's checkpoint is where the MVPNet run writes it
    assert mvpnet.checkpoint == (Path.cwd() / _checkpoint_dir(mvpnet_config) / "last.ckpt").resolve()
    stage1_by_checkpoint = {str(nr.checkpoint): nr for nr in plan.need_runs if nr.need.name == "stage1"}
    spex_cells = 0
    for cell in plan.cells:
        config = resolve_config(spec.base, cell.overrides)
        if not config["model"]["class_path"].endswith("VisionLanguageModel"):
            continue  # Table XI's MVPNet row has no stages
        spex_cells += 1
        args = _model_args(config)
        assert args["stage"] == "mask" and not args.get("schedule"), cell.name
        stage1 = stage1_by_checkpoint[args["init_from"]]
        stage1_config = resolve_config(stage1.need.recipe, stage1.overrides)
        stage1_args = _model_args(stage1_config)
        assert stage1_args["stage"] == "text" and not stage1_args.get("schedule"), stage1.name
        assert _checkpoint_dir(stage1_config) == str(stage1.run_dir / "checkpoints")
        assert str(stage1.checkpoint) == _checkpoint_dir(stage1_config) + "/last.ckpt"
        other_init = sweep.stem == "pretraining" and cell.labels["encoder_init"] != "MVPNet"
        assert (stage1_args.get("encoder_init") == str(mvpnet.checkpoint)) != other_init, cell.name
        # the stage-1 run is the cell's model, up to what only stage 2 uses
        assert _as_in_stage1(args) == _as_in_stage1(stage1_args), cell.name
    assert spex_cells >= 1


def _as_in_stage1(args: dict) -> dict:
    """A model's arguments as far as stage 1 sees them: without stages and initialisations,
    with only the text loss's weight, and without TCP's token count (its weights do not depend
    on it: adaptive pooling, then one projection)."""
    kept = {k: v for k, v in args.items() if k not in ("stage", "schedule", "encoder_init", "init_from")}
    kept["loss_weights"] = {"text": (args.get("loss_weights") or {}).get("text")}
    bridge = yaml.safe_load(yaml.safe_dump(kept.get("bridge")))
    if isinstance(bridge, dict) and bridge.get("class_path", "").endswith("TokenCompressionProjector"):
        bridge.get("init_args", {}).pop("num_tokens", None)
    kept["bridge"] = bridge
    return kept


# ----------------------------------------------------------------------- every cell builds


def _vision_forward(model: nn.Module, config: dict) -> torch.Size:
    """Encoder → fusion → projector of a model built on the meta device, on a meta image of the
    recipe's bands and size (shapes only); returns the visual tokens' shape."""
    data = config["data"]["init_args"]
    image = torch.empty(2, model.encoder.in_bands, data["image_size"], data["image_size"], device="meta")
    model.eval()  # BatchNorm: eval statistics
    return model.projector(model.fusion(model.encoder(image)).tokens).shape


def _vision_path(config: dict, model: nn.Module) -> str | None:
    """What decides a VisionLanguageModel's visual tokens (encoder, fusion, projector, image
    size and bands, the LLM's width); None for another model."""
    if not config["model"]["class_path"].endswith("VisionLanguageModel"):
        return None
    args = _model_args(config)
    data = config["data"]["init_args"]
    parts = {k: args.get(k) for k in ("encoder", "fusion", "projector")}
    parts.update(image_size=data["image_size"], bands=data.get("bands"), width=model.llm.hidden_size)
    return yaml.safe_dump(parts)


def _architecture(config: dict) -> str:
    """The model section without what does not change what is built: stages, initialisations,
    loss weights and TCP's token count (K pools, the weights do not depend on it)."""
    args = _as_in_stage1(_model_args(config))
    args.pop("loss_weights")
    return yaml.safe_dump({**config["model"], "init_args": args})


def test_every_paper_cell_builds_on_meta_and_sees_its_images(tmp_path: Path):
    """Each distinct model of the paper sweeps (cells and the runs they need) is built on the
    meta device (no weights, no hub: shipped configs) with its assembly checks, and each distinct
    vision path runs on a meta image of the recipe's bands and size (the CLIP ViT-L/14 cell at
    512 px included)."""
    seen: set[str] = set()
    seen_vision: set[str] = set()  # a vision path already run (InternImage-L on meta takes ~3 s)
    for sweep in PAPER_SWEEPS:
        needs, cells = sweep_configs(sweep, tmp_path / sweep.stem)
        for name, config in {**needs, **cells}.items():
            key = _architecture(config)
            if key in seen:
                continue
            seen.add(key)
            where = f"{sweep.name}: {name}"
            model = build_model_on_meta(config["model"])
            assert all(p.is_meta for p in model.parameters()), where
            vision = _vision_path(config, model)
            if vision is not None and vision not in seen_vision:
                seen_vision.add(vision)
                with torch.no_grad():
                    tokens = _vision_forward(model, config)
                assert tokens[0] == 2 and tokens[-1] == model.llm.hidden_size, (where, tokens)
    assert len(seen) >= 9  # MSAM, UperNet, single level, released MSAM, CLIP, ConvNeXt, 0.5B, 3B, MVPNet


@pytest.mark.parametrize("sweep", ["spex-components.yaml", "spex-components-demo.yaml"])
def test_without_msam_reads_the_encoders_last_level(sweep: str, tmp_path: Path):
    """Table VII's "w/o MSAM": "only the last-layer feature map from the vision encoder" (the
    paper, Sec. IV-C1), i.e. the coarsest level (1/32), not the level MSAM resizes to."""
    _, cells = sweep_configs(REPO / "recipes" / "ablations" / "spex" / sweep, tmp_path)
    single = {name: c for name, c in cells.items() if "w-o-MSAM" in name or "w/o MSAM" in name}
    assert single, sorted(cells)
    for name, config in single.items():
        model = build_model_on_meta(config["model"])
        fusion = model.fusion
        assert type(fusion).__name__ == "SingleScaleFusion", name
        assert fusion.in_reductions[fusion.level] == max(model.encoder.reductions) == 32, name


def test_misspelt_key_is_named(tmp_path: Path):
    recipe = yaml.safe_load((RECIPES / "spex-demo.yaml").read_text())
    recipe["model"]["init_args"]["bridge"]["init_args"]["num_tokenz"] = 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(recipe))
    with pytest.raises(
        RecipeError, match=r"bad\.yaml: model\.init_args\.bridge\.init_args\.num_tokenz: not an argument"
    ):
        run_lightning_cli(["fit", "--config", str(bad), "--print_config"])


def test_unknown_component_is_named(tmp_path: Path):
    recipe = yaml.safe_load((RECIPES / "spex-demo.yaml").read_text())
    recipe["model"]["init_args"]["fusion"]["class_path"] = "rsvlm.fusion.msam.MSAMM"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(recipe))
    with pytest.raises(
        RecipeError, match=r"bad\.yaml: model\.init_args\.fusion: class_path 'rsvlm\.fusion\.msam\.MSAMM'"
    ):
        run_lightning_cli(["fit", "--config", str(bad), "--print_config"])

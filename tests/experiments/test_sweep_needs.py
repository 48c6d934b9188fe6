"""``needs:`` of a sweep: runs first, skipped when finished, given on the command line, referred
to by name in overrides; a fake trainer checks every run got the checkpoint of its own need."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from rsvlm.experiments.sweep import SweepError, expand_grid, load_sweep, run_sweep, sweep_main
from rsvlm.experiments.sweep.needs import plan_needs

RECIPE = {
    "seed_everything": 0,
    "trainer": {"callbacks": [{"class_path": "Checkpoint", "init_args": {"dirpath": None}}]},
    "model": {"class_path": "toy.Model", "init_args": {"fusion": "msam", "init_from": None, "behaviour": "ok"}},
}

# A stand-in for `rsvlm fit`: a run whose config names `init_from` reads that checkpoint and
# records what it holds; a run with a checkpoint dirpath writes last.ckpt holding its run folder
# and fusion, so each consumer can tell whose checkpoint it got.
FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, sys, yaml
    config_path, run_dir = sys.argv[1], sys.argv[2]
    cfg = yaml.safe_load(open(config_path))
    args = cfg["model"]["init_args"]
    with open(os.environ["CALLS"], "a") as calls:
        calls.write(run_dir + "\\n")
    if args["behaviour"] == "fail":
        sys.exit(3)
    got = None
    if args.get("init_from"):
        got = json.load(open(args["init_from"]))
    dirpath = cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"]
    if dirpath and args["behaviour"] != "no-checkpoint":
        os.makedirs(dirpath, exist_ok=True)
        json.dump({"by": run_dir, "fusion": args["fusion"]}, open(os.path.join(dirpath, "last.ckpt"), "w"))
    json.dump({"test/F1": 0.5, "got": got}, open(os.path.join(run_dir, "metrics.json"), "w"))
    """
)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    for name in ("pre.yaml", "base.yaml"):
        (tmp_path / "recipes" / name).write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    (tmp_path / "fake_trainer.py").write_text(FAKE_TRAINER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CALLS", str(tmp_path / "calls.txt"))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return tmp_path


DIRPATH = {"trainer.callbacks.0.init_args.dirpath": "{run_dir}/checkpoints"}


def write_sweep(root: Path, **changes) -> Path:
    sweep = {
        "base": "base.yaml",
        "name": "chain",
        "out_dir": "runs/chain",
        "launcher": ["{python}", str(root / "fake_trainer.py"), "{config}", "{run_dir}"],
        "needs": {
            "pre": {
                "recipe": "pre.yaml",
                "out_dir": "runs/pre",
                "checkpoint": "checkpoints/last.ckpt",
                "overrides": DIRPATH,
            },
            "stage1": {
                "recipe": "base.yaml",
                "checkpoint": "checkpoints/last.ckpt",
                "axes": ["fusion"],
                "overrides": {**DIRPATH, "model.init_args.init_from": "{needs.pre}"},
            },
        },
        "overrides": {"model.init_args.init_from": "{needs.stage1}"},
        "axes": {"fusion": {"UperNet": {"model.init_args.fusion": "upernet"}, "MSAM": {}}, "seed": [0, 1]},
    }
    for key, value in changes.items():
        sweep[key] = value
    path = root / "recipes" / "chain.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def calls(root: Path) -> list[str]:
    path = root / "calls.txt"
    return [str(Path(line).relative_to(root)) for line in path.read_text().split()] if path.exists() else []


def got(root: Path, run: str) -> dict:
    return json.loads((root / "runs" / "chain" / run / "metrics.json").read_text())["got"]


def test_needs_run_first_and_every_run_gets_its_own_need(workspace, capsys):
    assert sweep_main([str(write_sweep(workspace)), "--quiet"]) == 0
    stage1 = {f: f"runs/chain/needs/stage1/fusion={f}" for f in ("UperNet", "MSAM")}
    order = calls(workspace)
    assert order[:3] == ["runs/pre", stage1["UperNet"], stage1["MSAM"]]  # needs first, in file order
    assert order[3:] == [f"runs/chain/{r.name}" for r in expand_grid(load_sweep(write_sweep(workspace)))]
    # stage 1 started from the pre-training run's checkpoint ...
    for fusion in ("UperNet", "MSAM"):
        stage1_got = json.loads((workspace / stage1[fusion] / "metrics.json").read_text())["got"]
        assert stage1_got == {"by": str(workspace / "runs/pre"), "fusion": "msam"}
    # ... and each cell from the stage-1 run of its own fusion
    for seed in (0, 1):
        assert got(workspace, f"fusion=UperNet__seed={seed}") == {
            "by": str(workspace / stage1["UperNet"]),
            "fusion": "upernet",
        }
        assert got(workspace, f"fusion=MSAM__seed={seed}") == {"by": str(workspace / stage1["MSAM"]), "fusion": "msam"}
    manifest = json.loads((workspace / "runs/chain/sweep.json").read_text())
    assert [n["status"] for n in manifest["needs"]] == ["finished"] * 3 and len(manifest["runs"]) == 4

    # a second invocation skips the finished needs and runs, and says so
    (workspace / "calls.txt").unlink()
    assert sweep_main([str(write_sweep(workspace)), "--quiet"]) == 0
    assert calls(workspace) == []
    assert "need stage1[fusion=MSAM]: finished" in capsys.readouterr().out


def test_only_runs_the_needs_of_the_selected_runs(workspace):
    assert sweep_main([str(write_sweep(workspace)), "--quiet", "--only", "fusion=MSAM", "--only", "seed=0"]) == 0
    assert calls(workspace) == ["runs/pre", "runs/chain/needs/stage1/fusion=MSAM", "runs/chain/fusion=MSAM__seed=0"]


def test_dry_run_prints_the_chain_with_the_paths(workspace, capsys):
    assert sweep_main([str(write_sweep(workspace)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert calls(workspace) == []
    lines = out.splitlines()
    heads = [line.split()[:2] for line in lines if line.startswith("  need ") or line.startswith("  run ")]
    assert heads == [["need", "pre"], ["need", "stage1[fusion=UperNet]"], ["need", "stage1[fusion=MSAM]"]] + [
        ["run", f"fusion={f}__seed={s}"] for f in ("UperNet", "MSAM") for s in (0, 1)
    ]
    ckpt = "runs/chain/needs/stage1/fusion=MSAM/checkpoints/last.ckpt"
    run_line = lines.index("  run fusion=MSAM__seed=1 [pending] after stage1[fusion=MSAM]")
    assert f"init_from {ckpt}" in lines[run_line + 1]
    config = yaml.safe_load((workspace / "runs/chain/fusion=MSAM__seed=1/config.yaml").read_text())
    assert config["model"]["init_args"]["init_from"] == str(workspace / ckpt)
    need_config = yaml.safe_load((workspace / "runs/pre/config.yaml").read_text())
    assert need_config["trainer"]["callbacks"][0]["init_args"]["dirpath"] == str(workspace / "runs/pre/checkpoints")
    # commands.sh runs the needs' lines first, in order, then the runs'
    commands = (workspace / "runs/chain/commands.sh").read_text().splitlines()
    assert [line.split("test -f ")[1].split()[0] for line in commands][:3] == [
        str(workspace / d / "metrics.json")
        for d in ("runs/pre", "runs/chain/needs/stage1/fusion=UperNet", "runs/chain/needs/stage1/fusion=MSAM")
    ]
    assert len(commands) == 7


def test_a_need_given_on_the_command_line_is_not_run(workspace, capsys):
    given = workspace / "mine.ckpt"
    given.write_text(json.dumps({"by": "me", "fusion": "x"}))
    assert sweep_main([str(write_sweep(workspace)), "--quiet", "--need", f"pre={given}"]) == 0
    assert "runs/pre" not in calls(workspace)
    stage1 = workspace / "runs/chain/needs/stage1/fusion=MSAM/metrics.json"
    assert json.loads(stage1.read_text())["got"] == {"by": "me", "fusion": "x"}
    out = capsys.readouterr().out
    assert "need pre [given]: mine.ckpt" in out and "need pre: given, mine.ckpt" in out


def test_missing_and_unfinished_needs_are_one_line_errors(workspace, capsys):
    sweep = write_sweep(workspace)
    assert sweep_main([str(sweep), "--need", "pre=nowhere.ckpt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(sweep) in err and "need 'pre'" in err and "nowhere.ckpt" in err

    # a need that says it finished but left no checkpoint
    (workspace / "runs/pre").mkdir(parents=True)
    (workspace / "runs/pre/metrics.json").write_text("{}")
    assert sweep_main([str(sweep)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(sweep) in err and "need 'pre'" in err and "checkpoint" in err

    # a SLURM array does not keep order: the needs must have finished first
    (workspace / "runs/pre/metrics.json").unlink()
    assert sweep_main([str(sweep), "--script", "slurm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(sweep) in err and "need 'pre' has not finished" in err


def test_a_failed_need_starts_none_of_its_runs(workspace):
    needs = yaml.safe_load(write_sweep(workspace).read_text())["needs"]
    needs["pre"]["overrides"] = {**DIRPATH, "model.init_args.behaviour": "fail"}
    assert sweep_main([str(write_sweep(workspace, needs=needs)), "--quiet"]) == 1
    assert calls(workspace) == ["runs/pre"]
    assert (workspace / "runs/pre/FAILED").is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"overrides": {"model.init_args.init_from": "{needs.nope}"}}, "not a declared need"),
        ({"overrides": {}}, "used by no override"),
        ({"axes": {"fusion": {"MSAM": {}}, "seed": [0]}, "needs.stage1.axes": ["seed", "colour"]}, "stage1.axes"),
        ({"needs.pre.overrides": {"model.init_args.init_from": "{needs.stage1}"}}, "a need declared after it"),
    ],
)
def test_token_and_need_errors(workspace, change, message):
    raw = yaml.safe_load(write_sweep(workspace).read_text())
    for key, value in change.items():
        if key.startswith("needs."):
            _, need, field = key.split(".")
            raw["needs"][need][field] = value
        else:
            raw[key] = value
    path = workspace / "recipes" / "chain.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SweepError, match=message) as info:
        spec = load_sweep(path)
        run_sweep(spec, dry_run=True)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_need_without_the_axes_of_the_need_it_uses(workspace):
    raw = yaml.safe_load(write_sweep(workspace).read_text())
    raw["needs"]["pre"]["axes"] = ["fusion"]
    raw["needs"]["stage1"]["axes"] = []
    path = workspace / "recipes" / "chain.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SweepError, match=r"need stage1 refers to \{needs.pre\}, a need per \['fusion'\]"):
        plan_needs(load_sweep(path), expand_grid(load_sweep(path)))

"""``rsvlm sweep``: grid expansion, config resolution, the runner with fake trainers, scripts, run records."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO

from rsvlm.experiments.runrecord import read_run_record, write_run_record
from rsvlm.experiments.sweep import (
    SweepError,
    expand_grid,
    load_sweep,
    parse_sweep,
    resolve_config,
    run_sweep,
    sanitize,
    sweep_main,
)

BASE = {
    "seed_everything": 0,
    "trainer": {
        "max_epochs": 10,
        "accelerator": "cpu",
        "callbacks": [{"class_path": "Early", "init_args": {"patience": 3}}],
    },
    "model": {
        "class_path": "toy_components.Model",
        "init_args": {
            "fusion": {"class_path": "toy_components.MSAM", "init_args": {"dim": 8, "heads": 2}},
            "bridge": {"class_path": "toy_components.TCP", "init_args": {"num_tokens": 4}},
            "behaviour": "ok",
        },
    },
    "data": {"class_path": "toy_components.Data", "init_args": {"template": "spectral", "root": "data/x"}},
}

# A stand-in for `rsvlm fit`: reads the run's config and acts on `model.init_args.behaviour`;
# appends its run folder to CALLS so tests can see which runs were started.
FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, signal, sys, time, yaml
    config_path, run_dir = sys.argv[1], sys.argv[2]
    cfg = yaml.safe_load(open(config_path))
    with open(os.environ["CALLS"], "a") as calls:
        calls.write(os.path.basename(run_dir) + "\\n")
    behaviour = cfg["model"]["init_args"]["behaviour"]
    if os.environ.get("FIXED"):
        behaviour = "ok"
    print("training", os.path.basename(run_dir), "cwd", os.getcwd(), flush=True)
    if behaviour == "fail":
        print("Traceback: something broke", file=sys.stderr, flush=True)
        sys.exit(1)
    if behaviour == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if behaviour == "silent":
        sys.exit(0)
    hang = os.environ.get("HANG")
    if hang and hang in run_dir:
        open(os.path.join(run_dir, "started"), "w").close()
        time.sleep(60)
    seed = cfg["seed_everything"]
    metrics = {"test/F1": 0.5 + seed / 100, "test/IoU": 0.4, "runtime_s": 1.0}
    with open(os.path.join(run_dir, "metrics.json"), "w") as handle:
        json.dump(metrics, handle)
    """
)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A recipe folder with the base recipe, the fake trainer, and the cwd set to tmp_path."""
    recipes = tmp_path / "recipes"
    (recipes / "ablations").mkdir(parents=True)
    (recipes / "base.yaml").write_text(yaml.safe_dump(BASE, sort_keys=False))
    (tmp_path / "fake_trainer.py").write_text(FAKE_TRAINER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CALLS", str(tmp_path / "calls.txt"))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return tmp_path


def write_sweep(root: Path, axes: dict, **more) -> Path:
    sweep = {
        "base": "../base.yaml",
        "name": "demo",
        "out_dir": "runs/demo",
        "launcher": ["{python}", str(root / "fake_trainer.py"), "{config}", "{run_dir}"],
        "axes": axes,
        **more,
    }
    path = root / "recipes" / "ablations" / "demo.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def calls(root: Path) -> list[str]:
    path = root / "calls.txt"
    return path.read_text().split() if path.exists() else []


def manifest(root: Path, out: str = "runs/demo") -> dict:
    return json.loads((root / out / "sweep.json").read_text())


# --------------------------------------------------------------------------- grid


COMPONENT_AXES = {
    "spectral_prompt": {
        "w/o SP": {"data.init_args.template": "plain"},
        "w/ SP": {"data.init_args.template": "spectral"},
    },
    "fusion": {
        "w/o MSAM": {"model.init_args.fusion": {"class_path": "toy_components.UperNet", "init_args": {"channels": 16}}},
        "w/ MSAM": {},
    },
    "num_tokens": {"key": "model.init_args.bridge.init_args.num_tokens", "values": [1, 2, 8]},
    "seed": [0, 1],
}


def test_grid_count_order_labels_and_overrides(workspace):
    spec = load_sweep(write_sweep(workspace, COMPONENT_AXES, overrides={"trainer.max_epochs": 3}))
    runs = expand_grid(spec)

    label_lists = [list(v) if isinstance(v, dict) and "key" not in v else None for v in COMPONENT_AXES.values()]
    label_lists[2] = ["1", "2", "8"]
    label_lists[3] = ["0", "1"]
    expected = list(itertools.product(*label_lists))
    assert len(runs) == 2 * 2 * 3 * 2
    assert [tuple(r.labels.values()) for r in runs] == expected
    assert all(list(r.labels) == list(COMPONENT_AXES) for r in runs)
    assert runs[0].name == "spectral_prompt=w-o-SP__fusion=w-o-MSAM__num_tokens=1__seed=0"
    assert len({r.name for r in runs}) == len(runs)

    first = runs[0]
    assert list(first.overrides) == [
        "trainer.max_epochs",
        "data.init_args.template",
        "model.init_args.fusion",
        "model.init_args.bridge.init_args.num_tokens",
        "seed_everything",  # the `seed` list axis is an alias for seed_everything
    ]
    assert first.overrides["model.init_args.bridge.init_args.num_tokens"] == 1
    assert first.values["num_tokens"] == 1 and first.values["seed"] == 0
    with_msam = next(r for r in runs if r.labels["fusion"] == "w/ MSAM")
    assert "model.init_args.fusion" not in with_msam.overrides


def test_later_axis_wins_and_moves_last(workspace):
    axes = {
        "a": {"x": {"trainer.max_epochs": 5, "model.init_args.fusion.init_args.dim": 4}},
        "b": {"y": {"trainer.max_epochs": 7}},
    }
    spec = load_sweep(write_sweep(workspace, axes, overrides={"trainer.max_epochs": 1}))
    (run,) = expand_grid(spec)
    assert run.overrides == {"model.init_args.fusion.init_args.dim": 4, "trainer.max_epochs": 7}
    assert list(run.overrides)[-1] == "trainer.max_epochs"


def test_resolve_config_rules(workspace):
    base = workspace / "recipes" / "base.yaml"
    config = resolve_config(
        base,
        {
            # class_path replaces the whole subtree: MSAM's dim/heads must not leak into UperNet
            "model.init_args.fusion": {"class_path": "toy_components.UperNet", "init_args": {"channels": 16}},
            # a dict without class_path merges into the existing dict
            "model.init_args.bridge": {"init_args": {"num_tokens": 2}},
            # dotted keys create levels
            "trainer.logger.init_args.name": "x",
            # integer parts index lists
            "trainer.callbacks.0.init_args.patience": 9,
            "seed_everything": 3,
        },
    )
    expected = json.loads(json.dumps(BASE))
    expected["model"]["init_args"]["fusion"] = {"class_path": "toy_components.UperNet", "init_args": {"channels": 16}}
    expected["model"]["init_args"]["bridge"]["init_args"]["num_tokens"] = 2
    expected["trainer"]["logger"] = {"init_args": {"name": "x"}}
    expected["trainer"]["callbacks"][0]["init_args"]["patience"] = 9
    expected["seed_everything"] = 3
    assert config == expected
    assert yaml.safe_load(base.read_text()) == BASE  # the base recipe is never modified

    with pytest.raises(SweepError, match="trainer.max_epochs"):
        resolve_config(base, {"trainer.max_epochs.x": 1})
    with pytest.raises(SweepError, match="integer index"):
        resolve_config(base, {"trainer.callbacks.first.init_args": {}})


def test_string_class_shorthand_is_expanded(tmp_path):
    base = tmp_path / "b.yaml"
    base.write_text("model:\n  fusion: toy_components.MSAM\n")
    config = resolve_config(base, {"model.fusion.init_args.dim": 4})
    assert config == {"model": {"fusion": {"class_path": "toy_components.MSAM", "init_args": {"dim": 4}}}}


TOY_COMPONENTS = textwrap.dedent(
    """
    class Fusion:
        pass

    class MSAM(Fusion):
        def __init__(self, dim: int = 8, heads: int = 1):
            self.dim, self.heads = dim, heads

    class UperNet(Fusion):
        def __init__(self, channels: int = 32):
            self.channels = channels

    class TCP:
        def __init__(self, num_tokens: int = 4):
            self.num_tokens = num_tokens

    class Model:
        def __init__(self, fusion: Fusion, bridge: TCP, behaviour: str = "ok"):
            self.fusion, self.bridge, self.behaviour = fusion, bridge, behaviour
    """
)


def test_written_configs_reload_and_parse_with_jsonargparse(workspace, monkeypatch):
    """Dry run writes every run's config; jsonargparse builds the replaced component from it."""
    from jsonargparse import ArgumentParser

    (workspace / "toy_components.py").write_text(TOY_COMPONENTS)
    monkeypatch.syspath_prepend(str(workspace))
    spec_path = write_sweep(workspace, COMPONENT_AXES)
    assert sweep_main([str(spec_path), "--dry-run"]) == 0
    assert calls(workspace) == []  # nothing ran

    spec = load_sweep(spec_path)
    runs = expand_grid(spec)
    lines = (spec.out_dir / "commands.sh").read_text().splitlines()
    assert len(lines) == len(runs)
    for run, line in zip(runs, lines):
        written = yaml.safe_load((spec.out_dir / run.name / "config.yaml").read_text())
        assert written == resolve_config(spec.base, run.overrides)
        assert str(spec.out_dir / run.name / "config.yaml") in line

    # Build the model of two runs through jsonargparse, as LightningCLI would.
    parser = ArgumentParser()
    parser.add_argument("--seed_everything", type=int)
    parser.add_argument("--trainer", type=dict)
    parser.add_argument("--data", type=dict)
    parser.add_argument("--model", type=__import__("toy_components").Model)
    for run in (runs[0], runs[-1]):
        config = parser.parse_path(str(spec.out_dir / run.name / "config.yaml"))
        model = parser.instantiate(config).model
        assert model.bridge.num_tokens == run.values["num_tokens"]
        if run.labels["fusion"] == "w/o MSAM":
            assert type(model.fusion).__name__ == "UperNet" and model.fusion.channels == 16
        else:
            assert type(model.fusion).__name__ == "MSAM" and (model.fusion.dim, model.fusion.heads) == (8, 2)


def test_sweep_file_errors(workspace):
    path = workspace / "recipes" / "ablations" / "bad.yaml"
    path.write_text("base: ../base.yaml\naxis: {}\n")
    with pytest.raises(SweepError, match=r"unknown keys \['axis'\]"):
        load_sweep(path)
    with pytest.raises(SweepError, match="not found"):
        parse_sweep({"base": "../nope.yaml"}, path)
    with pytest.raises(SweepError, match="same folder name"):
        parse_sweep({"base": "../base.yaml", "axes": {"a": {"w/o": {}, "w-o": {}}}}, path)
    with pytest.raises(SweepError, match="labels"):
        parse_sweep({"base": "../base.yaml", "axes": {"a": {"key": "x", "values": [{"p": 1}]}}}, path)
    assert sanitize("w/o SP") == "w-o-SP"


# --------------------------------------------------------------------------- runner


BEHAVIOUR_AXES = {
    "behaviour": {"key": "model.init_args.behaviour", "values": ["ok", "fail", "sigkill", "silent", "ok2"]},
    "seed": [0, 1],
}


def test_runner_records_failures_and_goes_on(workspace, capsys):
    spec_path = write_sweep(workspace, BEHAVIOUR_AXES)
    assert sweep_main([str(spec_path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "[10/10]" in out and "4 finished, 6 failed" in out

    spec = load_sweep(spec_path)
    runs = expand_grid(spec)
    assert calls(workspace) == [r.name for r in runs]  # every run was tried, in order
    statuses = {e["labels"]["behaviour"]: e["status"] for e in manifest(workspace)["runs"]}
    assert statuses == {"ok": "finished", "fail": "failed", "sigkill": "failed", "silent": "failed", "ok2": "finished"}

    by_behaviour = {r.values["behaviour"]: spec.out_dir / r.name for r in runs if r.values["seed"] == 0}
    fail = json.loads((by_behaviour["fail"] / "status.json").read_text())
    assert fail["returncode"] == 1 and "something broke" in fail["log_tail"]
    assert "exit code 1" in (by_behaviour["fail"] / "FAILED").read_text()
    assert json.loads((by_behaviour["sigkill"] / "status.json").read_text())["returncode"] == -signal.SIGKILL
    assert "no metrics.json" in (by_behaviour["silent"] / "FAILED").read_text()
    log = (by_behaviour["ok"] / "log.txt").read_text()
    assert "training" in log and f"cwd {workspace}" in log  # runs start from the sweep's cwd
    assert read_run_record(by_behaviour["ok"]).metrics["test/F1"] == pytest.approx(0.5)


def test_rerun_skips_finished_and_retries_failed(workspace, monkeypatch):
    spec_path = write_sweep(workspace, BEHAVIOUR_AXES)
    sweep_main([str(spec_path), "--quiet"])
    spec = load_sweep(spec_path)
    runs = expand_grid(spec)
    finished = [r for r in runs if r.values["behaviour"] in ("ok", "ok2")]

    def snapshot() -> dict:
        folders = [spec.out_dir / r.name for r in finished]
        return {d: ((d / "metrics.json").stat().st_mtime_ns, (d / "config.yaml").read_text()) for d in folders}

    before = snapshot()
    (workspace / "calls.txt").unlink()

    assert sweep_main([str(spec_path), "--quiet"]) == 1  # failures stay failures
    assert calls(workspace) == []

    monkeypatch.setenv("FIXED", "1")
    only = ["--only", "behaviour=fail", "--only", "behaviour=silent"]
    assert sweep_main([str(spec_path), "--quiet", "--retry-failed", *only]) == 0
    assert sorted(calls(workspace)) == sorted(r.name for r in runs if r.values["behaviour"] in ("fail", "silent"))
    statuses = {e["name"]: e["status"] for e in manifest(workspace)["runs"]}
    assert [statuses[r.name] for r in runs if r.values["behaviour"] == "sigkill"] == ["failed", "failed"]
    assert all(statuses[r.name] == "finished" for r in runs if r.values["behaviour"] == "fail")
    assert not any((spec.out_dir / r.name / "FAILED").exists() for r in runs if r.values["behaviour"] == "fail")
    assert snapshot() == before  # nothing finished was touched


def test_changed_sweep_refuses_to_mislabel_finished_runs(workspace):
    spec_path = write_sweep(workspace, {"seed": [0]})
    assert sweep_main([str(spec_path), "--quiet"]) == 0
    # LightningCLI may rewrite config.yaml in the run folder with every default filled in;
    # the sweep then still recognises the finished run through the hash in sweep.json.
    (run,) = expand_grid(load_sweep(spec_path))
    config_path = workspace / "runs" / "demo" / run.name / "config.yaml"
    config_path.write_text(config_path.read_text() + "ckpt_path: null\n")
    (workspace / "calls.txt").unlink()
    assert sweep_main([str(spec_path), "--quiet"]) == 0
    assert calls(workspace) == []
    write_sweep(workspace, {"seed": [0]}, overrides={"trainer.max_epochs": 99})
    with pytest.raises(SweepError, match="different config"):
        run_sweep(load_sweep(spec_path), echo_output=False)
    assert sweep_main([str(spec_path), "--quiet"]) == 2
    assert sweep_main([str(spec_path), "--quiet", "--only", "nope=1"]) == 2


def test_killed_sweep_resumes(workspace):
    """Kill the whole sweep while run 3 is training; the rerun does only runs 3..N."""
    spec_path = write_sweep(workspace, {"seed": [0, 1, 2, 3]})
    runs = expand_grid(load_sweep(spec_path))
    hung = runs[2]
    env = dict(os.environ, HANG=hung.name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsvlm.experiments.sweep", str(spec_path), "--quiet"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = workspace / "runs" / "demo" / hung.name / "started"
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "sweep ended before reaching the hung run"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    statuses = {e["name"]: e["status"] for e in manifest(workspace)["runs"]}
    assert [statuses[r.name] for r in runs] == ["finished", "finished", "pending", "pending"]
    (workspace / "calls.txt").unlink()
    assert sweep_main([str(spec_path), "--quiet"]) == 0
    assert calls(workspace) == [r.name for r in runs[2:]]
    assert all(e["status"] == "finished" for e in manifest(workspace)["runs"])


# --------------------------------------------------------------------------- scripts


def test_commands_sh_and_slurm_array(workspace):
    spec_path = write_sweep(workspace, BEHAVIOUR_AXES, slurm={"partition": "gpu", "gres": "gpu:1"})
    assert sweep_main([str(spec_path), "--script", "slurm"]) == 0
    spec = load_sweep(spec_path)
    runs = expand_grid(spec)
    sbatch = (spec.out_dir / "sweep.sbatch").read_text()
    assert sbatch.startswith("#!/bin/bash\n")
    assert f"#SBATCH --array=0-{len(runs) - 1}" in sbatch
    assert "#SBATCH --partition=gpu" in sbatch and "#SBATCH --gres=gpu:1" in sbatch
    assert "SLURM_ARRAY_TASK_ID" in sbatch
    assert calls(workspace) == []

    # Array task 4 must run the fifth run of the grid and only it.
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="4")
    done = subprocess.run(["bash", str(spec.out_dir / "sweep.sbatch")], env=env, cwd="/", check=False)
    assert calls(workspace) == [runs[4].name]
    assert (done.returncode == 0) == (runs[4].values["behaviour"] in ("ok", "ok2"))

    # commands.sh run whole: the failing run leaves FAILED with its exit code; finished runs are skipped.
    subprocess.run(["bash", str(spec.out_dir / "commands.sh")], check=False, cwd="/")
    assert calls(workspace).count(runs[4].name) == 1 + (runs[4].values["behaviour"] not in ("ok", "ok2"))
    fail_dir = spec.out_dir / next(r.name for r in runs if r.values["behaviour"] == "fail")
    assert (fail_dir / "FAILED").read_text().strip() == "exit code 1"
    assert "something broke" in (fail_dir / "log.txt").read_text()
    ok_dir = spec.out_dir / runs[0].name
    assert (ok_dir / "metrics.json").is_file()


# --------------------------------------------------------------------------- run records


def test_write_and_read_run_record(tmp_path):
    metrics = {"test/F1": torch.tensor(0.75), "test/IoU": np.float32(0.5)}
    extra = {"runtime_s": 12.5, "peak_memory_mb": 256.0, "params_total": 1000, "params_trainable": 10}
    config = {"model": {"class_path": "x.Y", "init_args": {"root": Path("data/x")}}}
    path = write_run_record(tmp_path / "run", metrics, config, extra)
    assert path == tmp_path / "run" / "metrics.json"

    stored = json.loads(path.read_text())
    assert stored == {"test/F1": 0.75, "test/IoU": 0.5, **extra}
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"] == torch.__version__
    assert env["device"]["cuda_available"] == torch.cuda.is_available()
    assert "commit" in env["git"]
    assert (
        yaml.safe_load((tmp_path / "run" / "config.parsed.yaml").read_text())["model"]["init_args"]["root"] == "data/x"
    )
    assert not list((tmp_path / "run").glob(".*.tmp"))  # atomic writes leave no temporaries

    record = read_run_record(tmp_path / "run")
    assert record.metrics == stored and record.environment == env

    # a second record in the same folder keeps the first one aside
    write_run_record(tmp_path / "run", {"test/F1": 0.9}, None, {})
    assert read_run_record(tmp_path / "run").metrics == {"test/F1": 0.9}
    (previous,) = (tmp_path / "run").glob("metrics.prev-*.json")
    assert json.loads(previous.read_text()) == stored

    with pytest.raises(ValueError, match="both"):
        write_run_record(tmp_path / "run", {"runtime_s": 1.0}, None, {"runtime_s": 2.0})
    with pytest.raises(FileNotFoundError, match="has not finished"):
        read_run_record(tmp_path / "empty")

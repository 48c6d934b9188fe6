"""`rsvlm fit --config recipes/spex-demo.yaml` end to end at a reduced size: it trains both stages,
checkpoints, tests the best checkpoint with generation and leaves a run record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_demo_recipe_runs_end_to_end(tmp_path: Path, _offline_cache):
    root = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "rsvlm.cli",
        "fit",
        "--config",
        str(REPO / "recipes" / "spex-demo.yaml"),
        f"--trainer.default_root_dir={root}",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
        "--model.init_args.schedule=[{stage: text, epochs: 1}, {stage: joint, epochs: 1}]",
        "--model.init_args.generation.max_new_tokens=8",
        "--data.init_args.generate.n_train=16",
        "--data.init_args.generate.n_val=4",
        "--data.init_args.generate.n_test=4",
    ]
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "switching to stage 'joint'" in result.stdout

    metrics = json.loads((root / "metrics.json").read_text())
    for name in ("F1", "Recall", "Precision", "OA", "IoU"):
        assert 0.0 <= metrics[f"test/{name}"] <= 1.0
    assert metrics["params_total"] > metrics["params_trainable"] > 0

    version = root / "logs" / "version_0"
    assert (version / "config.yaml").is_file() and (version / "metrics.csv").is_file()
    assert list(version.glob("events.out.tfevents.*")), "TensorBoard logs missing"
    assert list(root.rglob("last.ckpt")), "no last checkpoint"

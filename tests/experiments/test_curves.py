"""``rsvlm curves`` / ``curves.png``: a run's logged series, drawn by step and epoch.

The metrics file is written by Lightning's own ``CSVLogger``; the series read back are checked
against what was logged."""

from __future__ import annotations

import math

import pytest
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from rsvlm.cli.main import main
from rsvlm.experiments.curves import CurvesError, find_metrics_csv, read_curves, save_curves


def _logged_run(root):
    """A CSVLogger run: losses every 2 steps, validation at each epoch's end, a learning rate."""
    logger = CSVLogger(str(root), name="logs", version=0)
    logged = []
    step = 0
    for epoch in range(3):
        for _ in range(4):
            step += 1
            if step % 2 == 0:
                row = {"train/loss": 5.0 / step, "train/text_loss": 3.0 / step, "train/samples_per_s": 20.0}
                row["epoch"] = epoch
                logger.log_metrics(row, step=step)
                logged.append((step, epoch, row))
        row = {
            "val/F1": 0.5 + 0.1 * epoch,
            "val_teacher_forced/F1": 0.6 + 0.1 * epoch,
            "val_teacher_forced/loss": 2.0 - epoch,
        }
        row["epoch"] = epoch
        logger.log_metrics(row, step=step)
        logged.append((step, epoch, row))
        logger.log_metrics({"lr-AdamW": 1e-3 / (epoch + 1), "epoch": epoch}, step=step)
        logged.append((step, epoch, {"lr-AdamW": 1e-3 / (epoch + 1)}))
    logger.save()
    return logger, logged


def test_read_curves_gives_each_logged_value_at_its_step_or_epoch(tmp_path):
    logger, logged = _logged_run(tmp_path)
    curves = read_curves(find_metrics_csv(tmp_path))
    assert set(curves) == {"loss", "validation", "learning rate"}
    expected: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for step, epoch, row in logged:
        for name, value in row.items():
            if name in ("epoch", "train/samples_per_s"):
                continue
            panel = "learning rate" if name.startswith("lr-") else "loss" if "loss" in name else "validation"
            xs, ys = expected.setdefault(panel, {}).setdefault(name, ([], []))
            xs.append(float(epoch + 1 if panel == "validation" else step))
            ys.append(value)
    assert curves.keys() == expected.keys()
    for panel, series in expected.items():
        assert curves[panel].keys() == series.keys(), panel
        for name, (xs, ys) in series.items():
            assert curves[panel][name][0] == xs, name
            assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(curves[panel][name][1], ys)), name


def test_save_curves_draws_one_panel_per_kind_and_refuses_an_empty_file(tmp_path):
    _logged_run(tmp_path)
    out = save_curves(find_metrics_csv(tmp_path), tmp_path / "curves.png")
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size == (1500, 380)  # three 5-inch panels at 100 dpi
    with pytest.raises(FileExistsError):
        save_curves(find_metrics_csv(tmp_path), out)
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch,step,train/samples_per_s\n0,1,20.0\n")
    with pytest.raises(CurvesError, match="no loss, validation or learning-rate column"):
        save_curves(empty, tmp_path / "nothing.png")
    assert not (tmp_path / "nothing.png").exists()


def test_cli_curves_finds_the_run_and_never_replaces_silently(tmp_path, capsys):
    _logged_run(tmp_path)
    assert main(["curves", str(tmp_path)]) == 0
    drawn = tmp_path / "logs" / "version_0" / "curves.png"
    assert drawn.is_file() and str(drawn) in capsys.readouterr().err
    before = drawn.read_bytes()
    assert main(["curves", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "curves.png exists; pass --overwrite" in err
    assert drawn.read_bytes() == before
    assert main(["curves", str(tmp_path), "--overwrite"]) == 0
    assert main(["curves", str(tmp_path / "nowhere")]) == 2
    assert "no metrics.csv" in capsys.readouterr().err


def test_fit_draws_curves_once_and_a_failed_drawing_does_not_fail_the_run(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from rsvlm.cli.lightning import RsvlmCLI

    _logged_run(tmp_path)
    log_dir = tmp_path / "logs" / "version_0"
    cli = SimpleNamespace(trainer=SimpleNamespace(log_dir=str(log_dir), is_global_zero=True))
    RsvlmCLI._draw_curves(cli)
    drawn = log_dir / "curves.png"
    before = drawn.read_bytes()
    RsvlmCLI._draw_curves(cli)  # never over a picture that is there
    assert drawn.read_bytes() == before
    drawn.unlink()

    def boom(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr("rsvlm.experiments.curves.save_curves", boom)
    RsvlmCLI._draw_curves(cli)
    assert "curves not drawn (RuntimeError: no fonts)" in capsys.readouterr().err and not drawn.exists()

"""Checkpoint files: atomic writes, weights_only loads, plain hyper-parameters; the data position."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import REPO

from rsvlm.training.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    load_checkpoint,
    plain_hparams,
    save_atomically,
)


@dataclass
class _Settings:
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)


def test_hparams_become_weights_only_loadable(tmp_path):
    hparams = {"optim": _Settings(), "path": Path("/x/y"), "schedule": [_Settings(lr=1.0)]}
    torch.save({"hyper_parameters": hparams}, tmp_path / "raw.ckpt")
    with pytest.raises(CheckpointError, match="refused"):  # the raw dataclass is refused by weights_only
        load_checkpoint(tmp_path / "raw.ckpt")
    plain = plain_hparams(hparams)
    assert plain == {
        "optim": {"lr": 0.1, "betas": (0.9, 0.99)},
        "path": "/x/y",
        "schedule": [{"lr": 1.0, "betas": (0.9, 0.99)}],
    }
    AtomicCheckpointIO().save_checkpoint({"hyper_parameters": hparams, "state_dict": {}}, tmp_path / "ok.ckpt")
    assert torch.load(tmp_path / "ok.ckpt", weights_only=True)["hyper_parameters"] == plain


def test_io_round_trip_and_refusals(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.arange(3.0)}, "epoch": 1}, tmp_path / "a.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "a.ckpt")["state_dict"]["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]  # no temporary file left

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "extra": argparse.Namespace(x=1)}, evil)
    with pytest.raises(CheckpointError, match=r"refused to load checkpoint .*evil\.ckpt"):
        io.load_checkpoint(evil)

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((tmp_path / "a.ckpt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*truncated\.ckpt"):
        load_checkpoint(truncated)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        io.load_checkpoint(tmp_path / "missing.ckpt")


def test_a_file_torch_did_not_write_is_named_as_such_and_the_legacy_format_still_loads(tmp_path):
    from safetensors.torch import save_file

    weights = {"w": torch.arange(4.0)}
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": weights}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(
        load_checkpoint(legacy)["state_dict"]["w"], torch.load(legacy, weights_only=True)["state_dict"]["w"]
    )

    tensors = tmp_path / "model.safetensors"
    save_file(weights, str(tensors))
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    for path in (tensors, text):
        with pytest.raises(
            CheckpointError, match=rf"cannot read checkpoint .*{path.name}: not a file torch.save wrote"
        ):
            load_checkpoint(path)


class _FailsWhilePickled:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    save_atomically({"step": 1, "w": torch.ones(4)}, path)
    with pytest.raises(RuntimeError, match="simulated"):
        save_atomically({"step": 2, "w": torch.zeros(4), "bad": _FailsWhilePickled()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_process_killed_while_writing_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    save_atomically({"step": 1, "w": torch.ones(1000)}, path)
    script = textwrap.dedent(
        f"""
        import os, torch
        from rsvlm.training.checkpoints import save_atomically

        class Crash:
            def __reduce__(self):
                os._exit(9)  # the process dies in the middle of torch.save

        save_atomically({{"step": 2, "w": torch.zeros(1000), "crash": Crash()}}, {str(path)!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr
    checkpoint = load_checkpoint(path)
    assert checkpoint["step"] == 1 and torch.equal(checkpoint["w"], torch.ones(1000))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert all(name.startswith(".") and name.endswith(".tmp") for name in leftovers)


# ---------------------------------------------------------------------------- data position
class _Indices(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> int:
        return i


class _Pairs(torch.utils.data.Sampler):
    """Like the datamodule's SeededSampler: (index, augmentation seed) pairs, reshuffled per epoch."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 10

    def __iter__(self):
        g = torch.Generator().manual_seed(100 + self.epoch)
        return iter([(int(i), 7 * int(i) + self.epoch) for i in torch.randperm(10, generator=g)])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_restored_loader_yields_exactly_the_batches_not_yet_seen(workers):
    from rsvlm.data.loaders import ResumableDataLoader, ResumableSampler

    def loader():
        return ResumableDataLoader(_Indices(), sampler=ResumableSampler(10, seed=3), batch_size=3, num_workers=workers)

    first = loader()
    first.sampler.set_epoch(2)
    full = [b.tolist() for b in first]
    assert sorted(sum(full, [])) == list(range(10))  # the epoch's permutation, in batches of 3
    it = iter(first)
    seen = [next(it).tolist() for _ in range(2)]  # workers prefetch ahead; the position counts batches returned
    state = first.state_dict()
    assert state["epoch"] == 2 and state["batches"] == 2

    second = loader()
    second.load_state_dict(state)
    rest = [b.tolist() for b in second]
    assert seen + rest == full
    assert second.state_dict()["batches"] == len(full)
    second.sampler.set_epoch(3)
    assert len(list(second)) == len(full)  # the next epoch is whole again


def test_sharded_resumable_sampler_splits_an_inner_order_between_ranks():
    from rsvlm.data.loaders import ResumableSampler

    shards = [ResumableSampler(inner=_Pairs(), num_replicas=2, rank=r) for r in (0, 1)]
    for s in shards:
        s.set_epoch(1)
    items = [list(s) for s in shards]
    inner = _Pairs()
    inner.set_epoch(1)
    whole = list(inner)
    assert items[0] == whole[0::2] and items[1] == whole[1::2]
    shards[1].skip_next(1, 2)
    assert list(shards[1]) == whole[1::2][2:]
    assert list(shards[1]) == whole[1::2]  # the skip applies to one pass only

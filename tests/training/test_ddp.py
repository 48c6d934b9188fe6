"""The tiny SPEX under Lightning DDP with 2 CPU processes (gloo).

After training, both ranks hold identical weights, each rank trained on its own shard of every
epoch, and the test metrics (global confusion matrix, summed across ranks) equal a
single-process test of the same weights over the same data, whose size is odd: the test
loader's sampler (:func:`rsvlm.data.loaders.evaluation_sampler`) gives every sample to exactly
one rank, where ``DistributedSampler`` would repeat one. The DDP run is a subprocess
running this file as a script (``--child``), so Lightning's launcher and the process group
never touch the pytest process.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from test_resume import BATCH, TinyDataModule, build_model

N_TRAIN = 8  # 2 ranks × 2 batches × BATCH
N_TEST = 5  # odd: a padding DistributedSampler would test one sample twice (shards of 3 and 2)


class OddTestData(TinyDataModule):
    """TinyDataModule whose test loader shards as RsvlmDataModule's does."""

    def test_dataloader(self):
        from torch.utils.data import DataLoader

        from rsvlm.data.loaders import evaluation_sampler

        plain = super().test_dataloader()
        sampler = evaluation_sampler(plain.dataset)
        return DataLoader(plain.dataset, batch_size=BATCH, sampler=sampler, collate_fn=plain.collate_fn)


EPOCHS = 2


def weights_digest(model: torch.nn.Module) -> str:
    """Hash of every parameter's name and bytes (buffers such as BatchNorm running statistics are
    per rank under DDP: each rank updates them from its own last batch)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _child(out: Path) -> None:
    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import DDPStrategy

    torch.set_num_threads(1)

    class RecordSamples(Callback):
        def __init__(self) -> None:
            self.seen: list[tuple[int, list[int]]] = []

            self.tested: list[int] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.seen.append((trainer.current_epoch, [m["index"] for m in batch["meta"]]))

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            self.tested += [m["index"] for m in batch["meta"]]

    record = RecordSamples()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        # find_unused_parameters: SAM's IoU head is declared trainable but feeds no loss (see
        # test_every_trainable_parameter_gets_a_gradient below).
        strategy=DDPStrategy(process_group_backend="gloo", find_unused_parameters=True),
        max_epochs=EPOCHS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[record],
    )
    model = build_model()
    data = OddTestData(n_train=N_TRAIN, n_test=N_TEST)
    trainer.fit(model, datamodule=data)
    rank = trainer.global_rank
    digest = weights_digest(model)
    metrics = trainer.test(model, datamodule=data, verbose=False)[0]
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "digest": digest,
                "seen": record.seen,
                "tested": record.tested,
                "global_step": trainer.global_step,
                "world_size": trainer.world_size,
                "metrics": {k: float(v) for k, v in metrics.items()},
            }
        )
    )
    if rank == 0:
        torch.save(model.state_dict(), out / "weights.pt")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, _offline_cache):
    out = tmp_path_factory.mktemp("ddp")
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE.parent),
        "RSVLM_CACHE": str(_offline_cache),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(29500 + os.getpid() % 1000),
    }
    env.pop("LOCAL_RANK", None)
    result = subprocess.run(
        [sys.executable, __file__, "--child", str(out)], env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, ranks


def test_both_ranks_hold_identical_weights(ddp_run):
    _, (r0, r1) = ddp_run
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["global_step"] == r1["global_step"] == EPOCHS * N_TRAIN // (2 * BATCH)
    assert r0["digest"] == r1["digest"]
    fresh = weights_digest(build_model())
    assert r0["digest"] != fresh  # they trained


def test_each_rank_trains_on_its_own_shard(ddp_run):
    _, (r0, r1) = ddp_run
    for epoch in range(EPOCHS):
        a = sorted(i for e, b in r0["seen"] if e == epoch for i in b)
        b = sorted(i for e, b in r1["seen"] if e == epoch for i in b)
        assert not set(a) & set(b)
        assert sorted(a + b) == list(range(N_TRAIN))


def test_each_test_sample_is_scored_on_exactly_one_rank(ddp_run):
    _, (r0, r1) = ddp_run
    # TinySpie's test samples carry indices 500 + i (offset=500).
    assert sorted(r0["tested"] + r1["tested"]) == list(range(500, 500 + N_TEST))
    assert {len(r0["tested"]), len(r1["tested"])} == {N_TEST // 2, N_TEST - N_TEST // 2}


def test_evaluation_shards_cover_every_sample_once_without_a_trainer():
    from rsvlm.data.loaders import evaluation_sampler

    for n in (1, 2, 5, 7, 10):
        for world in (2, 3):
            if n < world:
                with pytest.raises(ValueError, match="processes"):
                    evaluation_sampler(range(n), num_replicas=world, rank=0)
                continue
            shards = [list(evaluation_sampler(range(n), num_replicas=world, rank=r)) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(n)), (n, world)
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert evaluation_sampler(range(5)) is None  # one process: a plain sequential loader


def test_rsvlm_datamodules_use_it_for_val_and_test(monkeypatch):
    import rsvlm.data.loaders as loaders
    from rsvlm.data.base import RsvlmDataModule

    class Listing(RsvlmDataModule):
        def collate_fn(self):
            return list

    data = Listing(batch_size=2)
    data.datasets = {"val": list(range(7)), "test": list(range(9)), "train": list(range(4))}
    monkeypatch.setattr(loaders, "_dist_world", lambda: (2, 1))
    assert [i for b in data.val_dataloader() for i in b] == [1, 3, 5]
    assert [i for b in data.test_dataloader() for i in b] == [1, 3, 5, 7]


def test_test_metrics_equal_a_single_process_run(ddp_run):
    import lightning as L

    out, (r0, r1) = ddp_run
    assert r0["metrics"] == r1["metrics"]  # every rank computes the global scores
    model = build_model()
    model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    single = trainer.test(model, datamodule=TinyDataModule(n_train=N_TRAIN, n_test=N_TEST), verbose=False)[0]
    assert set(single) == set(r0["metrics"]) and {"test/F1", "test/IoU", "test/OA"} <= set(single)
    for key, value in single.items():
        assert r0["metrics"][key] == pytest.approx(float(value), abs=1e-6), key


def test_every_trainable_parameter_gets_a_gradient():
    from test_resume import TinySpie

    from rsvlm.data.spie.dataset import SpieCollate

    model = build_model()
    data = TinySpie(2)
    batch = SpieCollate(model.llm.formatter)([data[0], data[1]])
    model.losses(model(batch), batch, with_mask=True)["total"].backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters that require grad but get none (plain DDP fails on them): {unused}"


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    _child(Path(sys.argv[2]))

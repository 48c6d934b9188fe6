"""Resume a run killed mid-epoch: same data position, optimizer, scheduler, step count and weights.

A tiny SPEX (frozen LLM base with LoRA, so the checkpoints are trained-only) is trained for two
epochs of three batches, with a checkpoint every two steps. One run goes through; another is
killed (``os._exit``, no clean-up) in a subprocess after step 5, then resumed from ``last``
(step 4, the first batch of epoch 1). Both must train on the same samples in the same order
and end with the same weights, optimizer state and scheduler state.

Also here: a NaN loss stops training with a message naming the step, and the last good
checkpoint stays on disk. Run as a script (``--child``) this module is the killed run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # conftest

from conftest import TINY_LLM_CONFIG

STEPS_PER_EPOCH = 3
EPOCHS = 2
BATCH = 2
SIZE = 32
EVERY = 2
KILL_AFTER = 5


# ---------------------------------------------------------------------------- harness
def build_model():
    """Tiny SPEX: a small timm encoder, MSAM, tiny Qwen2-style LM with LoRA, TCP, SAM head."""
    from rsvlm.bridges.tcp import TokenCompressionProjector
    from rsvlm.data.spie.corpus import SpieDemoTokenizer
    from rsvlm.encoders.timm_encoder import TimmEncoder
    from rsvlm.fusion.msam import MSAM
    from rsvlm.fusion.projector import MLPProjector
    from rsvlm.heads.sam_decoder import SamMaskDecoderHead
    from rsvlm.llm.causal_lm import CausalLM, LoraSettings
    from rsvlm.models.base import OptimizerGroup
    from rsvlm.models.vlm import VisionLanguageModel
    from rsvlm.training.optim import OptimSettings

    torch.manual_seed(0)
    encoder = TimmEncoder(model_name="test_efficientnet", in_bands=4)
    return VisionLanguageModel(
        encoder=encoder,
        fusion=MSAM(in_channels=encoder.channels, out_channels=32, form="paper"),
        projector=MLPProjector(in_dim=32, out_dim=32),
        llm=CausalLM(
            config=TINY_LLM_CONFIG,
            tokenizer=SpieDemoTokenizer(),
            freeze=True,
            lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        ),
        bridge=TokenCompressionProjector(in_dim=32, out_dim=32, num_tokens=2),
        decoder=SamMaskDecoderHead(in_channels=32, prompt_dim=32, decoder_depth=1, decoder_mlp_dim=64, decoder_heads=2),
        stage="joint",
        optimizer_groups={
            "vision": OptimizerGroup(["encoder", "fusion", "projector", "bridge", "decoder"], lr=1e-3),
            "llm": OptimizerGroup(["llm"], lr=1e-3),
        },
        optim=OptimSettings(warmup_steps=1),
        test_with_generation=False,
        log_images=0,
    )


class TinySpie(Dataset):
    """Samples in the datamodule contract; pixels and masks depend only on the index."""

    RESPONSES = ["A small water region at the top left.", "Water covers the left side.", "One lake, medium size."]

    def __init__(self, n: int, offset: int = 0, nan_index: int | None = None) -> None:
        self.n, self.offset, self.nan_index = n, offset, nan_index

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(1000 + self.offset + i)
        image = torch.randn(4, SIZE, SIZE, generator=g)
        mask = (torch.nn.functional.avg_pool2d(image[:1, None], 5, 1, 2)[0] > 0).float()
        if i == self.nan_index:
            image[:, :4, :4] = float("nan")
        return {
            "image": image,
            "mask": mask,
            "valid": torch.ones(1, SIZE, SIZE, dtype=torch.bool),
            "category": "water",
            "instruction": "Based on the provided image, describe the water regions.",
            "response": self.RESPONSES[(self.offset + i) % 3],
            "meta": {"index": self.offset + i, "image": f"sample-{self.offset + i}.tif"},
        }


class TinyDataModule(L.LightningDataModule):
    """Train on a :class:`ResumableDataLoader` (seeded, resumable), test in order."""

    def __init__(self, n_train: int = STEPS_PER_EPOCH * BATCH, n_test: int = 4, nan_index: int | None = None) -> None:
        super().__init__()
        self.train_set = TinySpie(n_train, nan_index=nan_index)
        self.test_set = TinySpie(n_test, offset=500)
        self._formatter = None
        from rsvlm.data.loaders import TrainPosition

        self._position = TrainPosition()

    def set_text_formatter(self, formatter) -> None:
        self._formatter = formatter

    def state_dict(self) -> dict:
        return self._position.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._position.load_state_dict(state)

    def train_dataloader(self):
        from rsvlm.data.loaders import ResumableDataLoader, ResumableSampler
        from rsvlm.data.spie.dataset import SpieCollate

        sampler = ResumableSampler(len(self.train_set), shuffle=True, seed=11)
        loader = ResumableDataLoader(
            self.train_set, sampler=sampler, batch_size=BATCH, collate_fn=SpieCollate(self._formatter)
        )
        return self._position.attach(loader)

    def test_dataloader(self):
        from rsvlm.data.spie.dataset import SpieCollate

        return DataLoader(self.test_set, batch_size=BATCH, shuffle=False, collate_fn=SpieCollate(self._formatter))


class RecordBatches(Callback):
    """Append ``[global step after the batch, sample indices]`` to a JSON-lines file, flushed per step."""

    def __init__(self, path: Path, kill_after: int | None = None) -> None:
        self.path, self.kill_after = Path(path), kill_after

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps([trainer.global_step, [m["index"] for m in batch["meta"]]]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.kill_after is not None and trainer.global_step >= self.kill_after:
            os._exit(3)  # a crash: no teardown, no checkpoint of this step


def make_trainer(root: Path, record: Path, kill_after: int | None = None, extra: list | None = None) -> L.Trainer:
    from rsvlm.training.checkpoints import AtomicCheckpointIO

    checkpoints = ModelCheckpoint(
        dirpath=root / "ckpts", every_n_train_steps=EVERY, save_last=True, save_top_k=-1, filename="step-{step}"
    )
    return L.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        plugins=[AtomicCheckpointIO()],
        callbacks=[checkpoints, RecordBatches(record, kill_after), *(extra or [])],
    )


def _records(path: Path) -> list[tuple[int, list[int]]]:
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]


def _child(root: Path) -> None:
    torch.set_num_threads(1)  # as in conftest: the same thread count gives the same float sums
    trainer = make_trainer(root, root / "killed.jsonl", kill_after=KILL_AFTER)
    trainer.fit(build_model(), datamodule=TinyDataModule())
    raise SystemExit("the run should have been killed")


# ---------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def runs(tmp_path_factory, _offline_cache):
    from rsvlm.training.callbacks import Throughput

    straight_root = tmp_path_factory.mktemp("straight")
    straight = build_model()
    straight_trainer = make_trainer(straight_root, straight_root / "batches.jsonl", extra=[Throughput(window=2)])
    straight_trainer.fit(straight, datamodule=TinyDataModule())

    root = tmp_path_factory.mktemp("killed")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "RSVLM_CACHE": str(_offline_cache)}
    child = subprocess.run(
        [sys.executable, __file__, "--child", str(root)], env=env, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 3, child.stdout[-2000:] + child.stderr[-4000:]

    resumed = build_model()
    resumed_trainer = make_trainer(root, root / "resumed.jsonl")
    resumed_trainer.fit(resumed, datamodule=TinyDataModule(), ckpt_path="last")
    return {"straight": (straight, straight_trainer, straight_root), "resumed": (resumed, resumed_trainer, root)}


def test_resume_continues_with_the_next_unseen_batch(runs):
    _, _, straight_root = runs["straight"]
    _, _, root = runs["resumed"]
    straight = _records(straight_root / "batches.jsonl")
    killed = _records(root / "killed.jsonl")
    resumed = _records(root / "resumed.jsonl")
    assert [s for s, _ in straight] == list(range(1, STEPS_PER_EPOCH * EPOCHS + 1))
    assert [s for s, _ in killed] == list(range(1, KILL_AFTER + 1))
    # "last" is step 4 (mid-epoch 1): steps 5 and 6 are trained again, on the same samples.
    last_saved = (KILL_AFTER // EVERY) * EVERY
    assert last_saved % STEPS_PER_EPOCH != 0
    assert [s for s, _ in resumed] == list(range(last_saved + 1, STEPS_PER_EPOCH * EPOCHS + 1))
    assert [b for _, b in killed[:last_saved] + resumed] == [b for _, b in straight]
    # Each epoch visits every sample once, in a different order.
    per_epoch = [sorted(sum((b for _, b in straight[e * 3 : e * 3 + 3]), [])) for e in range(EPOCHS)]
    assert per_epoch == [list(range(STEPS_PER_EPOCH * BATCH))] * EPOCHS
    assert straight[0][1] + straight[1][1] != straight[3][1] + straight[4][1]


def test_resume_reaches_the_same_weights_optimizer_and_scheduler(runs):
    straight, straight_trainer, _ = runs["straight"]
    resumed, resumed_trainer, _ = runs["resumed"]
    assert resumed_trainer.global_step == straight_trainer.global_step == STEPS_PER_EPOCH * EPOCHS
    a, b = straight.state_dict(), resumed.state_dict()
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5, rtol=1e-4), key
    # Something did train: the decoder moved away from a freshly built model.
    fresh = build_model().state_dict()
    assert any(not torch.allclose(a[k].float(), fresh[k].float()) for k in a if k.startswith("decoder."))

    opt_a = straight_trainer.optimizers[0].state_dict()
    opt_b = resumed_trainer.optimizers[0].state_dict()
    assert opt_a["state"].keys() == opt_b["state"].keys() and opt_a["state"]
    for i, state in opt_a["state"].items():
        assert int(state["step"]) == int(opt_b["state"][i]["step"])
        assert torch.allclose(state["exp_avg"], opt_b["state"][i]["exp_avg"], atol=1e-6, rtol=1e-4)
        assert torch.allclose(state["exp_avg_sq"], opt_b["state"][i]["exp_avg_sq"], atol=1e-8, rtol=1e-4)
    sched_a = straight_trainer.lr_scheduler_configs[0].scheduler
    sched_b = resumed_trainer.lr_scheduler_configs[0].scheduler
    assert sched_a.last_epoch == sched_b.last_epoch == STEPS_PER_EPOCH * EPOCHS
    assert sched_a.get_last_lr() == pytest.approx(sched_b.get_last_lr())


def test_checkpoints_are_trained_only_and_load_with_weights_only(runs):
    resumed, _, root = runs["resumed"]
    last = torch.load(root / "ckpts" / "last.ckpt", weights_only=True)  # as LightningCLI reads it
    # A config-built (random) LLM has no named source: its frozen base stays in the checkpoint.
    assert last["rsvlm"]["dropped"] == [] and last["rsvlm"]["frozen_bases"] == {}
    frozen_llm = {k for k, p in resumed.named_parameters() if k.startswith("llm.") and "lora_" not in k}
    assert frozen_llm and frozen_llm <= set(last["state_dict"])
    assert any("lora_" in k for k in last["state_dict"])
    assert last["global_step"] == STEPS_PER_EPOCH * EPOCHS
    assert isinstance(last["hyper_parameters"]["optim"], dict)
    assert not [p for p in (root / "ckpts").iterdir() if p.name.endswith(".tmp")]


def test_throughput_is_shown(runs):
    _, straight_trainer, _ = runs["straight"]
    assert float(straight_trainer.progress_bar_metrics["train/samples_per_s"]) > 0


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    from rsvlm.training.callbacks import NanGuard, NonFiniteLossError

    # Sample 0 holds NaN pixels; find the step that first draws it with the same seeded order.
    data = TinyDataModule(nan_index=0)
    from rsvlm.data.loaders import ResumableSampler

    order = ResumableSampler(len(data.train_set), shuffle=True, seed=11).shard(0)
    bad_step = order.index(0) // BATCH + 1
    if bad_step <= EVERY:  # make sure a good checkpoint exists before the bad batch
        data = TinyDataModule(nan_index=order[EVERY * BATCH])
        bad_step = EVERY + 1
    trainer = make_trainer(tmp_path, tmp_path / "batches.jsonl", extra=[NanGuard()])
    with pytest.raises(
        NonFiniteLossError, match=rf"global step {bad_step - 1}, epoch 0, batch {bad_step - 1}.*sample-"
    ):
        trainer.fit(build_model(), datamodule=data)
    last = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True)
    assert last["global_step"] == EVERY
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == sorted(["last.ckpt", f"step-step={EVERY}.ckpt"])


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    _child(Path(sys.argv[2]))

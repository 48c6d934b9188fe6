"""CpuThreads: a recipe pins PyTorch's CPU threads (rsvlm/training/cpu_threads.py)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from rsvlm.training.cpu_threads import CpuThreads


def test_the_thread_count_is_set_as_a_cpu_run_sets_up():
    before = torch.get_num_threads()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, max_steps=1)
    try:
        CpuThreads(threads=2).setup(trainer, L.LightningModule(), "fit")
        assert torch.get_num_threads() == 2
        CpuThreads().setup(trainer, L.LightningModule(), "test")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_count_below_one_is_refused():
    with pytest.raises(ValueError, match="CpuThreads.threads: must be >= 1, got 0"):
        CpuThreads(threads=0)

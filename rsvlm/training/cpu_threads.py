"""Pin PyTorch's CPU thread count for a run: :class:`CpuThreads`.

A tiny model's operators are too small to gain from several threads, and on a CPU shared with
other jobs they lose badly: each parallel region waits for its slowest thread, and a thread that
another process has pushed off its core stalls all the others. The EarthGPT-X demo's training step
took about 1 s with PyTorch's default two threads on a 2-core machine that another job kept busy,
and 0.14 s with one thread. In a recipe::

    trainer:
      callbacks:
        - class_path: rsvlm.training.cpu_threads.CpuThreads
          init_args: {threads: 1}

The count is set when the trainer sets up (fit, validate, test, predict) and stays for the rest
of the process; the ``OMP_NUM_THREADS`` environment variable does the same from outside.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class CpuThreads(Callback):
    """``torch.set_num_threads(threads)`` as the trainer sets up, on CPU runs only.

    Args:
        threads: intra-op threads per process (>= 1).
    """

    def __init__(self, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"CpuThreads.threads: must be >= 1, got {threads}")
        self.threads = threads

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Set the thread count when the run is on the CPU (an accelerator's runs are left as they are)."""
        if trainer.strategy.root_device.type == "cpu":
            torch.set_num_threads(self.threads)

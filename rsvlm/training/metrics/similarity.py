"""Referring-object classification ``SS`` ("semantic similarity") as SPHINX-V and Osprey compute it.

``SS = mean_k cos(e(p_k), e(g_k))`` over every region pair k of the answers seen (a fraction, as the
library's other scores; the papers print it ×100), after
Osprey's pre-processing (:func:`rsvlm.training.metrics.text.roc_pairs`: the prediction keeps the text
after ':' with '.', ':', ',' made spaces; the reference has '_' and ':' made spaces; multi-region
answers pair per ``Region k: label`` line). ``e`` is a sentence-transformers model
(``all-MiniLM-L6-v2`` in the papers) and the cosine that of ``sentence_transformers.util``.

Offline: the model is read from a local folder only (``SentenceTransformer.save`` / a download of
``sentence-transformers/all-MiniLM-L6-v2``), never from a hub; a path that is not a folder is an
error naming the argument. ``sentence-transformers`` is optional (``pip install 'rsvlm[metrics]'``).

The model is not a submodule of the metric: it is loaded lazily at the first ``update``, on the
metric's device, into a process-wide cache keyed by (folder, device). So its weights never enter the
``state_dict`` (and checkpoints) of a model that holds the metric, ``.to()`` / ``.half()`` of the
model leave it alone, and the metric's copies (one per split, task and group) share one encoder. The
metric states are a sum of cosines and a count of pairs, summed over processes (DDP-safe).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torchmetrics import Metric

from rsvlm.contracts import MissingFileError
from rsvlm.training.metrics.text import roc_pairs

#: Encoders loaded in this process, by (folder, device).
_ENCODERS: dict[tuple[str, str], Any] = {}
#: Warnings already given in this process (each is given once).
_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """``warnings.warn(message)`` the first time this process meets ``message``."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def import_sentence_transformers() -> ModuleType:
    """The ``sentence_transformers`` module.

    Raises:
        ImportError: a one-line reason, with the install hint, when it cannot be imported.
    """
    try:
        import sentence_transformers
    except ImportError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImportError(
            f"SS needs the optional package sentence-transformers (pip install 'rsvlm[metrics]'): {reason}"
        ) from err
    return sentence_transformers


def model_folder(model: str | os.PathLike[str], argument: str = "similarity_model") -> str:
    """The absolute path of a local sentence-transformers folder.

    Raises:
        FileNotFoundError: ``model`` is not a folder (a one-line message naming ``argument``).
    """
    path = Path(model).expanduser()
    if not path.is_dir():
        raise MissingFileError(
            f"{argument}={str(model)!r} is not a local folder: give the folder of a sentence-transformers model "
            "(e.g. all-MiniLM-L6-v2 saved with SentenceTransformer.save); models are never fetched from a hub"
        )
    return str(path.resolve())


def sentence_encoder(folder: str, device: torch.device | str) -> Any:
    """The ``SentenceTransformer`` of ``folder`` on ``device``, loaded once per process (local files only)."""
    key = (folder, str(device))
    if key not in _ENCODERS:
        st = import_sentence_transformers()
        _ENCODERS[key] = st.SentenceTransformer(folder, device=str(device), local_files_only=True)
    return _ENCODERS[key]


def pair_cosines(
    folder: str, pairs: Sequence[tuple[str, str]], device: torch.device | str = "cpu", batch_size: int = 64
) -> torch.Tensor:
    """``cos(e(p), e(g))`` of each (prediction, reference) pair (``len(pairs)`` float64 values); each
    distinct text is embedded once."""
    if not pairs:
        return torch.zeros(0, dtype=torch.float64, device=device)
    st = import_sentence_transformers()
    texts = list(dict.fromkeys(text for pair in pairs for text in pair))
    index = {text: i for i, text in enumerate(texts)}
    embeddings = sentence_encoder(folder, device).encode(
        texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False
    )
    a = embeddings[[index[p] for p, _ in pairs]]
    b = embeddings[[index[g] for _, g in pairs]]
    return st.util.pairwise_cos_sim(a, b).to(torch.float64)


class SemanticSimilarity(Metric):
    """``SS``: the mean cosine of the sentence embeddings of every region pair seen (module docstring).

    Args:
        model: the local folder of a sentence-transformers model (``all-MiniLM-L6-v2`` in the papers).
        batch_size: texts embedded per forward pass.

    Raises:
        FileNotFoundError: ``model`` is not a folder.
        ImportError: ``sentence-transformers`` is not installed.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, model: str | os.PathLike[str], batch_size: int = 64) -> None:
        super().__init__()
        self.model_folder = model_folder(model, "model")
        import_sentence_transformers()
        self.batch_size = batch_size
        self.add_state("cosine", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"SemanticSimilarity: {len(predictions)} predictions for {len(references)} references")
        pairs = [pair for p, r in zip(predictions, references) for pair in roc_pairs(p, r)]
        if pairs:
            self.cosine += pair_cosines(self.model_folder, pairs, self.device, self.batch_size).sum()
            self.count += len(pairs)

    def compute(self) -> torch.Tensor:
        return self.cosine / self.count.clamp_min(1)

"""Trained-only checkpoints, frozen-base identities, atomic writes, weights_only loads, LoRA export."""

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
from conftest import REPO, TINY_LLM_CONFIG, contract_batch, tiny_spex_components

from rsvlm.models.spex import SpexModel
from rsvlm.training.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    export_lora,
    keep_trained_only,
    load_checkpoint,
    plain_hparams,
    restore_frozen,
    save_atomically,
)


def _model(seed: int = 0, **overrides) -> SpexModel:
    parts = tiny_spex_components(lora=True)  # seeds 0 itself
    if seed:
        from rsvlm.llm.causal_lm import CausalLM, LoraSettings

        torch.manual_seed(seed)
        parts["llm"] = CausalLM(
            config={**TINY_LLM_CONFIG, **overrides},
            tokenizer="demo",
            freeze=True,
            lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        )
    return SpexModel(**parts, stage="joint")


def _trained(model: SpexModel) -> SpexModel:
    """Move every trainable parameter away from its initial value (LoRA B starts at 0)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return model


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    model = _trained(_model())
    folder = tmp_path_factory.mktemp("ckpt")
    torch.save(model.state_dict(), folder / "full.pt")  # tied weights stored once, as in any full save
    full = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    keep_trained_only(model, checkpoint)
    path = save_atomically(checkpoint, folder / "trimmed.ckpt")
    return path, full, folder


def test_frozen_llm_base_is_dropped_and_everything_trained_is_kept(trained_checkpoint):
    path, full, _ = trained_checkpoint
    checkpoint = torch.load(path, weights_only=True)
    kept = set(checkpoint["state_dict"])
    model = _model()
    params = dict(model.named_parameters(remove_duplicate=False))
    # Stage "joint" lets every component train what it declared, so requires_grad is the reference.
    expected_dropped = {k for k, p in params.items() if not p.requires_grad}
    assert set(checkpoint["rsvlm"]["dropped"]) == expected_dropped
    # By construction: the LLM's base weights are frozen (only LoRA trains), and so is SAM's prompt encoder.
    llm_base = {k for k in params if k.startswith("llm.") and "lora_" not in k}
    assert llm_base and llm_base <= expected_dropped
    # Besides the LLM base, only what the SAM head freezes: its prompt encoder and, with a
    # single output mask, the IoU prediction head that no loss uses.
    frozen_in_head = ("decoder.prompt_encoder.", "decoder.mask_decoder.iou_prediction_head.")
    assert expected_dropped - llm_base <= {k for k in params if k.startswith(frozen_in_head)}
    assert set(checkpoint["rsvlm"]["frozen_bases"]) <= {"llm", "decoder"}
    assert kept == set(full) - expected_dropped
    assert any("lora_A" in k for k in kept) and any(k.startswith("decoder.") for k in kept)
    assert all(
        k.startswith(("encoder.", "fusion.", "projector.", "bridge.", "decoder.")) or "lora_" in k
        for k in kept
        if k in params
    )
    persistent_buffers = {k for k, _ in model.named_buffers()} & set(full)
    assert any("running_mean" in k for k in persistent_buffers)
    assert persistent_buffers <= kept  # BatchNorm statistics travel with the checkpoint


def test_sizes_are_recorded_and_the_file_is_smaller(trained_checkpoint):
    path, full, folder = trained_checkpoint
    sizes = torch.load(path, weights_only=True)["rsvlm"]["sizes"]
    # The recorded sizes are tensor payloads; the files add a little zip/pickle overhead.
    overhead = 512 * 1024
    full_file = (folder / "full.pt").stat().st_size
    assert sizes["full_bytes"] <= full_file <= sizes["full_bytes"] + overhead
    assert sizes["kept_bytes"] <= path.stat().st_size <= sizes["kept_bytes"] + overhead
    assert sizes["kept_bytes"] + sizes["dropped_bytes"] == sizes["full_bytes"]
    assert sizes["dropped_params"] > 0 and path.stat().st_size < full_file


def test_restore_fills_the_frozen_base_and_reproduces_every_tensor(trained_checkpoint):
    path, full, _ = trained_checkpoint
    checkpoint = torch.load(path, weights_only=True)
    fresh = _model()
    restore_frozen(fresh, checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    restored = fresh.state_dict()
    assert set(restored) == set(full)
    for key, value in full.items():
        assert torch.equal(restored[key], value), key


def test_a_different_frozen_base_is_refused_with_the_component_name(trained_checkpoint):
    path, _, _ = trained_checkpoint
    other_seed = _model(seed=7)
    with pytest.raises(CheckpointError, match=r"component 'llm'.*frozen weights differ"):
        restore_frozen(other_seed, torch.load(path, weights_only=True))
    other_arch = _model(seed=7, num_hidden_layers=1)
    with pytest.raises(CheckpointError, match=r"component 'llm'.*(names or shapes|config differs)"):
        restore_frozen(other_arch, torch.load(path, weights_only=True))


def test_full_checkpoints_pass_through_restore_untouched():
    model = _model()
    checkpoint = {"state_dict": model.state_dict()}
    before = set(checkpoint["state_dict"])
    restore_frozen(model, checkpoint)
    assert set(checkpoint["state_dict"]) == before


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


# ---------------------------------------------------------------------------- LoRA export
@pytest.fixture(scope="module")
def lora_llm(tmp_path_factory):
    from rsvlm.llm.causal_lm import CausalLM, LoraSettings

    base_dir = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    CausalLM(config=TINY_LLM_CONFIG, tokenizer="demo", freeze=False).model.save_pretrained(base_dir)
    llm = CausalLM(model=str(base_dir), tokenizer="demo", lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in llm.model.named_parameters():
            if "lora_B" in name:  # 0 at initialisation: make the adapters change the logits
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    llm.eval()
    return llm, base_dir


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapters_export_in_peft_format_and_load_with_peft(lora_llm, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    llm, base_dir = lora_llm
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    expected = _logits(llm.model, ids)
    base_only = _logits(AutoModelForCausalLM.from_pretrained(base_dir), ids)
    assert not torch.allclose(expected, base_only, atol=1e-4)  # the adapters matter

    out = export_lora(llm, tmp_path / "adapters", merged=False)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out).eval()
    assert torch.allclose(_logits(loaded, ids), expected, atol=1e-5)
    with pytest.raises(FileExistsError, match="not empty"):
        export_lora(llm, out, merged=False)


def test_merged_export_loads_with_transformers_and_leaves_the_model_alone(lora_llm, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    llm, _ = lora_llm
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    expected = _logits(llm.model, ids)
    out = export_lora(llm, tmp_path / "merged", merged=True)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(_logits(merged, ids), expected, atol=1e-5)
    assert isinstance(llm.model, PeftModel)
    assert torch.equal(_logits(llm.model, ids), expected)


def test_export_without_lora_is_a_clear_error(tmp_path):
    from rsvlm.llm.causal_lm import CausalLM

    llm = CausalLM(config=TINY_LLM_CONFIG, tokenizer="demo", freeze=True)
    with pytest.raises(ValueError, match="no peft adapters"):
        export_lora(llm, tmp_path / "x")


def test_contract_batch_still_runs_after_restore(trained_checkpoint):
    path, _, _ = trained_checkpoint
    checkpoint = torch.load(path, weights_only=True)
    model = _model()
    restore_frozen(model, checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    out = model(contract_batch(model.llm.formatter, size=32))
    assert torch.isfinite(out["mask_logits"]).all()


def test_a_state_dict_without_the_trained_names_is_saved_whole():
    # E.g. a sharded or prefixed state dict: trimming must never drop trained weights.
    model = _model()
    state = {f"wrapped.{k}": v for k, v in model.state_dict().items()}
    checkpoint = {"state_dict": state}
    with pytest.warns(UserWarning, match="saving the full state dict"):
        assert keep_trained_only(model, checkpoint) == {}
    assert checkpoint["state_dict"] is state and len(state) == len(model.state_dict())
    restore_frozen(model, {"rsvlm": {"dropped": ["llm.x"]}})  # no state dict (DeepSpeed): nothing to fill


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

"""Trained-only checkpoints: frozen bases dropped and identified, restored and checked on load."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_LLM_CONFIG, contract_batch, tiny_spex_components

from rsvlm.models.vlm import VisionLanguageModel
from rsvlm.training.checkpoints import CheckpointError, save_atomically
from rsvlm.training.trained_only import keep_trained_only, restore_frozen


def _model(seed: int = 0, **overrides) -> VisionLanguageModel:
    parts = tiny_spex_components(lora=True)  # seeds 0 itself
    if seed:
        from rsvlm.data.spie.corpus import SpieDemoTokenizer
        from rsvlm.llm.causal_lm import CausalLM, LoraSettings

        torch.manual_seed(seed)
        parts["llm"] = CausalLM(
            config={**TINY_LLM_CONFIG, **overrides},
            tokenizer=SpieDemoTokenizer(),
            freeze=True,
            lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        )
    return VisionLanguageModel(**parts, stage="joint")


def _trained(model: VisionLanguageModel) -> VisionLanguageModel:
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

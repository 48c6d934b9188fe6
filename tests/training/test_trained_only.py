"""Trained-only checkpoints: frozen weights that a named source restores are dropped and
identified; everything else (trained, or randomly initialised and frozen) is kept.

The sources are tiny files written to a temporary folder: an LLM saved with ``save_pretrained``
and a SAM checkpoint holding a tiny head's ``mask_decoder.*`` / ``prompt_encoder.*``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY_LLM_CONFIG, contract_batch

from rsvlm.models.vlm import VisionLanguageModel
from rsvlm.training.checkpoints import CheckpointError, save_atomically
from rsvlm.training.trained_only import keep_trained_only, restore_frozen

SAM = dict(in_channels=32, prompt_dim=32, decoder_depth=1, decoder_mlp_dim=64, decoder_heads=2)


def _parts(seed: int, llm: str | None = None, sam: str | None = None, **llm_overrides) -> dict:
    """The tiny SPEX wiring (as ``conftest.tiny_spex_components(lora=True)``) built under ``seed``;
    the LLM base from folder ``llm`` and the SAM decoder from file ``sam`` when given."""
    from rsvlm.bridges.tcp import TokenCompressionProjector
    from rsvlm.data.spie.corpus import SpieDemoTokenizer
    from rsvlm.encoders.timm_encoder import TimmEncoder
    from rsvlm.fusion.msam import MSAM
    from rsvlm.fusion.projector import MLPProjector
    from rsvlm.heads.sam_decoder import SamMaskDecoderHead
    from rsvlm.llm.causal_lm import CausalLM, LoraSettings

    torch.manual_seed(seed)
    encoder = TimmEncoder(model_name="resnet18", in_bands=4)
    source = dict(model=llm) if llm is not None else dict(config={**TINY_LLM_CONFIG, **llm_overrides})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*SAM checkpoints were trained with")
        decoder = SamMaskDecoderHead(**SAM, checkpoint=sam)
    return dict(
        encoder=encoder,
        fusion=MSAM(in_channels=encoder.channels, out_channels=32, form="paper"),
        projector=MLPProjector(in_dim=32, out_dim=32),
        llm=CausalLM(
            **source, tokenizer=SpieDemoTokenizer(), freeze=True, lora=LoraSettings(r=4, alpha=8, dropout=0.0)
        ),
        bridge=TokenCompressionProjector(in_dim=32, out_dim=32, num_tokens=2),
        decoder=decoder,
    )


def _model(seed: int = 0, **sources) -> VisionLanguageModel:
    return VisionLanguageModel(**_parts(seed, **sources), stage="joint")


def _save_sources(folder: Path, seed: int) -> dict[str, str]:
    """A tiny LLM folder and a tiny SAM checkpoint, both random under ``seed``."""
    from rsvlm.data.spie.corpus import SpieDemoTokenizer
    from rsvlm.heads.sam_decoder import SamMaskDecoderHead
    from rsvlm.llm.causal_lm import CausalLM

    torch.manual_seed(seed)
    CausalLM(config=TINY_LLM_CONFIG, tokenizer=SpieDemoTokenizer()).base_model.save_pretrained(folder / "llm")
    head = SamMaskDecoderHead(**SAM)
    state = {
        f"{part}.{k}": v
        for part in ("mask_decoder", "prompt_encoder")
        for k, v in getattr(head, part).state_dict().items()
    }
    torch.save(state, folder / "sam.pth")
    return {"llm": str(folder / "llm"), "sam": str(folder / "sam.pth")}


def _train_one_step(model: VisionLanguageModel) -> VisionLanguageModel:
    """One SGD step on the contract batch (LoRA B starts at 0, so the step moves it)."""
    batch = contract_batch(model.llm.formatter, size=32)
    model.losses(model(batch), batch, with_mask=True)["total"].backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    return model


def _outputs(model: VisionLanguageModel) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = model(contract_batch(model.llm.formatter, size=32))
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def _trimmed(model: VisionLanguageModel, path: Path) -> Path:
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    keep_trained_only(model, checkpoint)
    return save_atomically(checkpoint, path)


@pytest.fixture(scope="module")
def sourced(tmp_path_factory):
    """A seed-1 model with its LLM base and SAM decoder loaded from files, trained one step."""
    folder = tmp_path_factory.mktemp("sources")
    sources = _save_sources(folder, seed=5)
    model = _train_one_step(_model(seed=1, **sources))
    full = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(model.state_dict(), folder / "full.pt")  # tied weights stored once, as in any full save
    return model, sources, full, _trimmed(model, folder / "trimmed.ckpt"), folder


def test_only_frozen_weights_with_a_source_are_dropped(sourced):
    model, _, full, path, _ = sourced
    checkpoint = torch.load(path, weights_only=True)
    params = dict(model.named_parameters(remove_duplicate=False))
    # Independent reference: frozen, and inside the LLM (loaded from its folder) or inside the two
    # SAM parts the file restores; the neck and every other component are randomly initialised.
    restored = ("llm.", "decoder.mask_decoder.", "decoder.prompt_encoder.")
    expected = {k for k, p in params.items() if not p.requires_grad and k.startswith(restored)}
    assert set(checkpoint["rsvlm"]["dropped"]) == expected
    assert any(k.startswith("llm.") for k in expected) and any(k.startswith("decoder.prompt") for k in expected)
    assert set(checkpoint["rsvlm"]["frozen_bases"]) == {"llm", "decoder"}
    assert checkpoint["rsvlm"]["frozen_bases"]["decoder"]["source"].endswith("sam.pth")
    assert set(checkpoint["state_dict"]) == set(full) - expected
    assert any("lora_A" in k for k in checkpoint["state_dict"])
    persistent_buffers = {k for k, _ in model.named_buffers()} & set(full)
    assert any("running_mean" in k for k in persistent_buffers)
    assert persistent_buffers <= set(checkpoint["state_dict"])  # BatchNorm statistics travel along


def test_random_frozen_weights_stay_in_the_checkpoint(tmp_path):
    # No source at all: the frozen LLM base and SAM's frozen prompt encoder are random, so they are kept.
    model = _model(seed=1)
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert any(k.startswith("llm.") for k in frozen) and any(k.startswith("decoder.prompt") for k in frozen)
    checkpoint = torch.load(_trimmed(model, tmp_path / "c.ckpt"), weights_only=True)
    assert checkpoint["rsvlm"]["dropped"] == [] and checkpoint["rsvlm"]["frozen_bases"] == {}
    assert set(checkpoint["state_dict"]) == set(model.state_dict())


def test_a_model_trained_with_another_seed_loads_into_a_seed_0_build(tmp_path):
    trained = _train_one_step(_model(seed=1))
    path = _trimmed(trained, tmp_path / "seed1.ckpt")
    fresh = _model(seed=0)
    assert not torch.equal(fresh.llm.base_model.lm_head.weight, trained.llm.base_model.lm_head.weight)
    fresh.load_weights(str(path))
    expected, got = _outputs(trained), _outputs(fresh)
    assert set(got) == set(expected) and "mask_logits" in got
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_lightning_predict_from_another_seeds_checkpoint_equals_the_trained_model(tmp_path):
    """``rsvlm predict`` restores through Lightning (``ckpt_path``: ``on_load_checkpoint``, then a
    strict load) into the recipe's seed-0 build: the generated text and masks are the trained
    seed-1 model's."""
    import lightning as L
    from conftest import quiet_trainer

    trained = _train_one_step(_model(seed=1)).eval()
    checkpoint = {"state_dict": trained.state_dict(), "pytorch-lightning_version": L.__version__}
    trained.on_save_checkpoint(checkpoint)  # what Lightning's ModelCheckpoint writes: trained-only
    assert checkpoint["rsvlm"]["dropped"] == []  # random frozen parts (no source) stay in it
    path = save_atomically(checkpoint, tmp_path / "seed1.ckpt")
    batch = contract_batch(trained.llm.formatter, size=32)
    with torch.no_grad():
        expected = trained.predict_masks(batch)

    fresh = _model(seed=0)
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    trainer = quiet_trainer()
    (got,) = trainer.predict(fresh, dataloaders=loader, ckpt_path=str(path))
    assert got["texts"] == expected["texts"]
    torch.testing.assert_close(got["mask_logits"], expected["mask_logits"], rtol=0, atol=0)


def test_sourced_weights_are_restored_from_their_path(sourced):
    trained, sources, full, path, _ = sourced
    fresh = _model(seed=0, **sources)  # another seed: only the files make the frozen parts equal
    fresh.load_weights(str(path))
    restored = fresh.state_dict()
    assert set(restored) == set(full)
    for key, value in full.items():
        assert torch.equal(restored[key], value), key
    expected, got = _outputs(trained), _outputs(fresh)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_sizes_are_recorded_and_the_file_is_smaller(sourced):
    _, _, _, path, folder = sourced
    sizes = torch.load(path, weights_only=True)["rsvlm"]["sizes"]
    # The recorded sizes are tensor payloads; the files add a little zip/pickle overhead.
    overhead = 512 * 1024
    full_file = (folder / "full.pt").stat().st_size
    assert sizes["full_bytes"] <= full_file <= sizes["full_bytes"] + overhead
    assert sizes["kept_bytes"] <= path.stat().st_size <= sizes["kept_bytes"] + overhead
    assert sizes["kept_bytes"] + sizes["dropped_bytes"] == sizes["full_bytes"]
    assert sizes["dropped_params"] > 0 and path.stat().st_size < full_file


def test_a_different_or_missing_source_is_refused_with_the_component_name(sourced, tmp_path):
    _, sources, _, path, _ = sourced
    other = _save_sources(tmp_path, seed=9)
    with pytest.raises(CheckpointError, match=r"component 'llm'.*frozen weights differ"):
        restore_frozen(_model(llm=other["llm"], sam=sources["sam"]), torch.load(path, weights_only=True))
    with pytest.raises(CheckpointError, match=r"component 'llm'.*now from no source"):
        restore_frozen(_model(sam=sources["sam"]), torch.load(path, weights_only=True))


def test_a_checkpoint_of_another_architecture_names_the_component(tmp_path):
    path = _trimmed(_model(), tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match=r"component 'llm'.*shape"):
        restore_frozen(_model(intermediate_size=48), torch.load(path, weights_only=True))


def test_full_checkpoints_pass_through_restore_untouched():
    model = _model()
    checkpoint = {"state_dict": model.state_dict()}
    before = set(checkpoint["state_dict"])
    restore_frozen(model, checkpoint)
    assert set(checkpoint["state_dict"]) == before


def test_a_state_dict_without_the_trained_names_is_saved_whole():
    # E.g. a sharded or prefixed state dict: trimming must never drop trained weights.
    model = _model()
    state = {f"wrapped.{k}": v for k, v in model.state_dict().items()}
    checkpoint = {"state_dict": state}
    with pytest.warns(UserWarning, match="saving the full state dict"):
        assert keep_trained_only(model, checkpoint) == {}
    assert checkpoint["state_dict"] is state and len(state) == len(model.state_dict())
    restore_frozen(model, {"rsvlm": {"dropped": ["llm.x"]}})  # no state dict (DeepSpeed): nothing to fill


def test_encoders_loaded_from_a_file_declare_it_and_random_ones_do_not(tmp_path):
    import timm

    from rsvlm.encoders.internimage import InternImageEncoder
    from rsvlm.encoders.timm_encoder import TimmEncoder
    from rsvlm.training.trained_only import weights_sources

    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet18.pth")
    timm_path = str(tmp_path / "resnet18.pth")
    assert weights_sources(TimmEncoder("resnet18", in_bands=4, checkpoint_path=timm_path)) == {"": timm_path}
    assert weights_sources(TimmEncoder("resnet18", in_bands=4)) == {}
    torch.save(InternImageEncoder("tiny-test").state_dict(), tmp_path / "internimage.pth")
    intern_path = str(tmp_path / "internimage.pth")
    assert weights_sources(InternImageEncoder("tiny-test", checkpoint_path=intern_path)) == {"": intern_path}
    assert weights_sources(InternImageEncoder("tiny-test")) == {}

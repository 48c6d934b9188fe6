"""Components frozen by the stage run in eval mode inside the full model: a frozen LoRA LLM with
dropout > 0 gives the same hidden states on every pass (audit §1.9), and a frozen encoder's
BatchNorm statistics do not move during a training step."""

from __future__ import annotations

import torch
from conftest import TINY_LLM_CONFIG, contract_batch, quiet_trainer, randomize_lora, tiny_spex_components
from torch import nn
from torch.utils.data import DataLoader

from rsvlm.data.spie.corpus import SpieDemoTokenizer
from rsvlm.llm.causal_lm import CausalLM
from rsvlm.llm.lora import LoraSettings
from rsvlm.models.vlm import VisionLanguageModel

LORA_DROPOUT = 0.5


def _lora_model(stage: str) -> VisionLanguageModel:
    """The tiny SPEX with a LoRA LLM whose adapters have dropout > 0 and change the output
    (lora_B is 0 at initialisation, which would hide any dropout on the adapter path)."""
    components = tiny_spex_components(lora=True)
    torch.manual_seed(0)
    components["llm"] = CausalLM(
        config=TINY_LLM_CONFIG,
        tokenizer=SpieDemoTokenizer(),
        freeze=True,
        special_tokens=["<image>"],
        lora=LoraSettings(r=4, alpha=8, dropout=LORA_DROPOUT),
    )
    model = VisionLanguageModel(**components, stage=stage)
    randomize_lora(model.llm)
    return model


def _lora_dropouts(model: VisionLanguageModel) -> list[nn.Dropout]:
    return [m for name, m in model.llm.named_modules() if "lora_dropout" in name and isinstance(m, nn.Dropout)]


def _llm_hidden(model: VisionLanguageModel, batch: dict, visual: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.llm(batch["input_ids"], batch["attention_mask"], visual).hidden_states


def test_stage_frozen_lora_llm_runs_without_dropout_after_train():
    model = _lora_model(stage="mask")
    dropouts = _lora_dropouts(model)
    assert dropouts and all(d.p == LORA_DROPOUT for d in dropouts)  # the adapters do have dropout
    model.eval()
    model.train()  # what Lightning calls at every training epoch
    assert "llm" in model.frozen_components() and not any(p.requires_grad for p in model.llm.parameters())
    assert model.training and model.decoder.training  # the stage's own components do train
    assert not model.llm.training
    assert not any(d.training for d in dropouts)
    batch = contract_batch(model.llm.formatter)
    with torch.no_grad():
        visual = model.encode_image(batch["image"])[1]
    torch.manual_seed(0)
    first = _llm_hidden(model, batch, visual)
    torch.manual_seed(1)  # a different dropout draw, if dropout were on
    second = _llm_hidden(model, batch, visual)
    assert torch.equal(first, second)

    # Control: in stage "text" the LLM trains, so its adapter dropout is on and changes the
    # hidden states between passes (the check above can see dropout).
    model.set_stage("text")
    model.train()
    assert model.llm.training and all(d.training for d in dropouts)
    torch.manual_seed(0)
    first = _llm_hidden(model, batch, visual)
    torch.manual_seed(1)
    assert not torch.equal(first, _llm_hidden(model, batch, visual))


def _batchnorm_buffers(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: buf.detach().clone()
        for name, buf in encoder.named_buffers()
        if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")
    }


def _fit_one_step(model: VisionLanguageModel, tmp_path) -> list[bool]:
    """One Lightning training step of the full model; returns whether any encoder BatchNorm was in
    train mode at the start of each training batch."""
    import lightning.pytorch as pl

    seen: list[bool] = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            norms = [m for m in pl_module.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            seen.append(any(m.training for m in norms))

    batch = contract_batch(model.llm.formatter)
    trainer = quiet_trainer(max_steps=1, callbacks=[Spy()], default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    return seen


def test_stage_frozen_encoder_keeps_its_batchnorm_statistics_over_a_training_step(tmp_path):
    # stage "mask" with the encoder frozen (and the LLM, as always in stage "mask")
    frozen = VisionLanguageModel(
        **tiny_spex_components(), stage="mask", stage_components={"mask": ["fusion", "bridge", "decoder"]}
    )
    before = _batchnorm_buffers(frozen.encoder)
    assert any(k.endswith("running_mean") for k in before)  # resnet18 has BatchNorm
    fusion_before = {k: v.detach().clone() for k, v in frozen.fusion.state_dict().items()}
    assert _fit_one_step(frozen, tmp_path / "frozen") == [False]
    after = _batchnorm_buffers(frozen.encoder)
    assert all(torch.equal(before[k], after[k]) for k in before), [
        k for k in before if not torch.equal(before[k], after[k])
    ]
    # the step did train: the stage's fusion moved
    assert any(not torch.equal(v, frozen.fusion.state_dict()[k]) for k, v in fusion_before.items())

    # Control: with the encoder in the stage, the same step moves its running statistics.
    trained = VisionLanguageModel(**tiny_spex_components(), stage="mask")
    before = _batchnorm_buffers(trained.encoder)
    assert _fit_one_step(trained, tmp_path / "trained") == [True]
    after = _batchnorm_buffers(trained.encoder)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean"))

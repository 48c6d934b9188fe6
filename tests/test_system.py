"""System-level checks across components: inference equals a teacher-forced pass over what was
generated, sampling through a LoRA-wrapped LLM, and the stage-1 → stage-2 handoff."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import contract_batch, quiet_trainer, randomize_lora, tiny_spex_components
from torch.utils.data import DataLoader

from rsvlm.llm.chat import IGNORE_INDEX
from rsvlm.models.vlm import VisionLanguageModel


def _lora_model(**kwargs) -> VisionLanguageModel:
    """A tiny SPEX with LoRA adapters that change the LLM (lora_B is 0 at initialisation)."""
    model = VisionLanguageModel(**tiny_spex_components(lora=True), **kwargs)
    randomize_lora(model.llm)
    return model


def _one(batch: dict, i: int) -> dict:
    """Row ``i`` of a collated batch, without padding (every tensor cut to its own length)."""
    row = {k: (v[i : i + 1] if torch.is_tensor(v) else v[i : i + 1]) for k, v in batch.items()}
    keep = row["prompt_attention_mask"][0].bool()
    row["prompt_ids"] = row["prompt_ids"][:, keep]
    row["prompt_attention_mask"] = row["prompt_attention_mask"][:, keep]
    return row


def test_inference_equals_a_teacher_forced_pass_over_the_generated_tokens():
    """The mask of ``predict_masks`` is the mask a teacher-forced pass gives when the generated
    tokens are the response: generation reads the same hidden states (causal attention) at the
    same positions (the response without its closing token)."""
    model = _lora_model(stage="joint").eval()
    model.generation.max_new_tokens = 10
    batch = contract_batch(model.llm.formatter)
    for i in range(2):
        row = _one(batch, i)
        inferred = model.predict_masks(row)
        visual = model.encode_image(row["image"])[1]
        gen = model.llm.generate(
            row["prompt_ids"], row["prompt_attention_mask"], visual, **model.generation.generate_kwargs()
        )
        assert torch.equal(gen.sequences, inferred["token_ids"])
        kept = gen.mask[0]
        response = gen.sequences[0, kept]
        input_ids = torch.cat([row["prompt_ids"][0], response])[None]
        labels = torch.cat([torch.full_like(row["prompt_ids"][0], IGNORE_INDEX), response])[None]
        response_mask = torch.cat(
            [torch.zeros_like(row["prompt_ids"][0], dtype=torch.bool), gen.response_mask[0, kept]]
        )
        forced = {
            **row,
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": labels,
            "response_mask": response_mask[None],
        }
        with torch.no_grad():
            teacher_forced = model(forced, with_mask=True)["mask_logits"]
        assert response_mask.any()
        torch.testing.assert_close(inferred["mask_logits"], teacher_forced, rtol=1e-4, atol=1e-4)


def test_sampling_through_lora_repeats_per_seed_and_differs_between_seeds():
    model = _lora_model(stage="joint").eval()
    batch = contract_batch(model.llm.formatter)
    model.generation.max_new_tokens = 12

    def tokens(seed: int | None, do_sample: bool = True) -> torch.Tensor:
        model.generation.do_sample, model.generation.temperature, model.generation.seed = do_sample, 1.5, seed
        return model.predict_masks(batch)["token_ids"]

    greedy = tokens(None, do_sample=False)
    assert torch.equal(tokens(0), tokens(0))
    samples = [tokens(s) for s in range(4)]
    assert any(not torch.equal(samples[0], s) for s in samples[1:]), "sampling ignored the seed"
    assert any(not torch.equal(greedy, s) for s in samples), "sampling never left the greedy path"


def _fit(model: VisionLanguageModel, batches: list[dict], root: Path, steps: int) -> Path:
    trainer = quiet_trainer(max_steps=steps, default_root_dir=root)
    # batch_size=None: each item already is a collated batch
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    path = root / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def _state(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_stage_one_to_stage_two_handoff_through_init_from(tmp_path: Path):
    """Stage 1 (text, LoRA) saves a trained-only checkpoint; stage 2 (mask, LLM frozen) starts
    from it with ``init_from`` and then moves the decoder while the LLM stays put."""
    stage1 = _lora_model(stage="text")
    batches = [contract_batch(stage1.llm.formatter)] * 3
    trained = ("encoder.", "fusion.", "projector.", "llm.")
    before = {prefix: _state(stage1, prefix) for prefix in trained}
    ckpt = _fit(stage1, batches, tmp_path / "stage1", steps=3)
    for prefix in trained:
        after = _state(stage1, prefix)
        assert any(not torch.equal(before[prefix][k], v) for k, v in after.items()), f"stage 1 did not train {prefix}"

    stage2 = VisionLanguageModel(**tiny_spex_components(lora=True), stage="mask", init_from=str(ckpt))
    for key, value in stage1.state_dict().items():
        if key.startswith(trained):
            assert torch.equal(stage2.state_dict()[key], value), key

    llm_before, decoder_before = _state(stage2, "llm."), _state(stage2, "decoder.")
    _fit(stage2, batches, tmp_path / "stage2", steps=2)
    assert all(torch.equal(stage2.state_dict()[k], v) for k, v in llm_before.items()), "stage 2 moved the LLM"
    assert any(not torch.equal(stage2.state_dict()[k], v) for k, v in decoder_before.items())

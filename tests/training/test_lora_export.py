"""LoRA export: peft-format adapters and the merged model load without rsvlm."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_LLM_CONFIG, randomize_lora

from rsvlm.training.lora_export import export_lora


@pytest.fixture(scope="module")
def lora_llm(tmp_path_factory):
    from rsvlm.data.spie.corpus import SpieDemoTokenizer
    from rsvlm.llm.causal_lm import CausalLM, LoraSettings

    base_dir = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    CausalLM(config=TINY_LLM_CONFIG, tokenizer=SpieDemoTokenizer(), freeze=False).model.save_pretrained(base_dir)
    llm = CausalLM(model=str(base_dir), tokenizer=SpieDemoTokenizer(), lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    randomize_lora(llm.model, seed=5, scale=0.1)
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
    from rsvlm.data.spie.corpus import SpieDemoTokenizer
    from rsvlm.llm.causal_lm import CausalLM

    llm = CausalLM(config=TINY_LLM_CONFIG, tokenizer=SpieDemoTokenizer(), freeze=True)
    with pytest.raises(ValueError, match="no peft adapters"):
        export_lora(llm, tmp_path / "x")

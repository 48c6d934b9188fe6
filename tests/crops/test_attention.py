"""PSC's heat map (Eq. 4) against attention gradients computed directly in the test on a tiny eager
Llama: the visual tokens spliced by hand, torch.autograd.grad of the log-likelihood w.r.t. the
last layer's attention."""

from __future__ import annotations

import pytest
import torch

from rsvlm.crops.attention import GradAttentionMap
from rsvlm.data.spie.corpus import SpieDemoTokenizer
from rsvlm.llm.causal_lm import CausalLM

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


@pytest.fixture(scope="module")
def llm():
    torch.manual_seed(0)
    return CausalLM(config=TINY_LLAMA, tokenizer=SpieDemoTokenizer(), freeze=True).eval()


def _prompts(llm):
    batch = llm.formatter(["Where is the ship?", "Find the storage tank near the river, please."], ["", ""])
    return batch["prompt_ids"], batch["prompt_attention_mask"]


def _reference(llm, prompt_ids, mask, visual, sign=-1.0):
    """Splice by hand, run the Llama eagerly, differentiate the log-likelihood w.r.t. A."""
    embeds, masks = [], []
    for ids, m, v in zip(prompt_ids, mask, visual):
        at = int((ids == llm.image_token_id).nonzero())
        e = llm.embed(ids[None])[0]
        embeds.append(torch.cat([e[:at], v, e[at + 1 :]]))
        masks.append(torch.cat([m[:at], torch.ones(len(v), dtype=m.dtype), m[at + 1 :]]))
    model = llm.base_model
    model.set_attn_implementation("eager")
    try:
        inputs = torch.stack(embeds).detach().requires_grad_(True)
        out = model(inputs_embeds=inputs, attention_mask=torch.stack(masks), output_attentions=True, use_cache=False)
        attention = out.attentions[-1]
        logits = out.logits[:, -1]
        loglik = logits.log_softmax(-1).gather(1, logits.argmax(-1, keepdim=True)).sum()
        (grad,) = torch.autograd.grad(-sign * loglik, attention)
    finally:
        model.set_attn_implementation("sdpa")
    heat = (grad.relu() * attention)[:, :, -1].mean(1)
    n = visual.shape[1]
    # each sample's visual columns start at its own image token (left padding differs per sample)
    starts = [int((ids == llm.image_token_id).nonzero()) for ids in prompt_ids]
    return torch.stack([heat[b, at : at + n] for b, at in enumerate(starts)])


def test_heat_map_equals_the_gradient_weighted_attention_by_hand(llm):
    prompt_ids, mask = _prompts(llm)
    torch.manual_seed(1)
    visual = torch.randn(2, 16, 32)
    with torch.inference_mode():  # as at Lightning's validation: the map still gets its gradients
        heat = GradAttentionMap()(llm, prompt_ids, mask, visual)
    assert heat.shape == (2, 4, 4)
    want = _reference(llm, prompt_ids, mask, visual)
    torch.testing.assert_close(heat.reshape(2, 16), want, rtol=1e-5, atol=1e-7)
    assert heat.sum() > 0
    assert llm.base_model.config._attn_implementation == "sdpa"  # switched back
    assert all(p.grad is None for p in llm.parameters())


def test_literal_sign_prompt_mean_rows_and_grids(llm):
    prompt_ids, mask = _prompts(llm)
    visual = torch.randn(2, 12, 32)
    literal = GradAttentionMap(grad_sign="literal")(llm, prompt_ids, mask, visual, grid=(3, 4))
    torch.testing.assert_close(
        literal.reshape(2, 12), _reference(llm, prompt_ids, mask, visual, sign=1.0), rtol=1e-5, atol=1e-7
    )
    assert GradAttentionMap(query="prompt_mean")(llm, prompt_ids, mask, visual, grid=(4, 3)).shape == (2, 4, 3)
    with pytest.raises(ValueError, match="not a square grid"):
        GradAttentionMap()(llm, prompt_ids, mask, visual)
    with pytest.raises(ValueError, match="does not hold 12"):
        GradAttentionMap()(llm, prompt_ids, mask, visual, grid=(5, 5))

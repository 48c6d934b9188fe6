"""``CausalLM.generate`` applies ``repetition_penalty`` and ``top_p`` as transformers defines them:
its tokens equal a decoding loop written by hand with transformers' own
``RepetitionPenaltyLogitsProcessor`` / ``TemperatureLogitsWarper`` / ``TopPLogitsWarper`` on the
model's logits, and each setting changes what is generated (audit item 4)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_QWEN2_CONFIG
from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from rsvlm.data.spie.corpus import build_demo_tokenizer
from rsvlm.llm.causal_lm import CausalLM

INSTRUCTIONS = ["Segment the water.", "Find all buildings in the scene and describe them."]
RESPONSES = ["A small pond lies in the top-left.", "Large buildings at the bottom-right cover 35% of the image."]
N_VISUAL, WIDTH, NEW_TOKENS = 5, 32, 16


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tok") / "demo"
    build_demo_tokenizer(folder)
    return str(folder)


def tiny_lm(tok_dir: str) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(config=dict(TINY_QWEN2_CONFIG), tokenizer=tok_dir, freeze=False).eval()


def visual(b: int = 2) -> torch.Tensor:
    return torch.randn(b, N_VISUAL, WIDTH, generator=torch.Generator().manual_seed(1))


def unpadded_prompts(lm: CausalLM) -> dict:
    """Two prompts of the same length (the same instruction; the images differ): no padding."""
    batch = lm.formatter([INSTRUCTIONS[0]] * 2, RESPONSES)
    assert batch["prompt_attention_mask"].all()
    return batch


def by_hand(lm: CausalLM, batch: dict, vis: torch.Tensor, processors: list, sample: bool = False) -> torch.Tensor:
    """Decode token by token: a full forward over prompt + tokens so far, the last logits through
    ``processors`` (given the generated tokens, as the prompt is embeddings only), then argmax or
    one multinomial draw; a finished row continues with padding."""
    spliced = lm.spliced_prompt(batch["prompt_ids"], batch["prompt_attention_mask"], vis)
    embeds, mask = spliced.embeds, spliced.attention_mask
    stop = torch.tensor(sorted({lm.end_token_id, lm.tokenizer.eos_token_id} - {None}))
    generated = torch.zeros(embeds.shape[0], 0, dtype=torch.long)
    done = torch.zeros(embeds.shape[0], dtype=torch.bool)
    for _ in range(NEW_TOKENS):
        full_mask = torch.cat([mask, torch.ones_like(generated)], dim=1)
        with torch.no_grad():
            logits = (
                lm.model(
                    inputs_embeds=torch.cat([embeds, lm.embed(generated)], dim=1),
                    attention_mask=full_mask,
                    position_ids=(full_mask.long().cumsum(1) - 1).clamp(min=0),
                    use_cache=False,
                )
                .logits[:, -1]
                .float()
            )
        for processor in processors:
            logits = processor(generated, logits)
        token = torch.multinomial(logits.softmax(-1), 1).squeeze(1) if sample else logits.argmax(-1)
        token = torch.where(done, torch.full_like(token, lm.formatter.pad_token_id), token)
        generated = torch.cat([generated, token[:, None]], dim=1)
        done |= torch.isin(token, stop)
        if done.all():
            break
    return generated


def generate(lm: CausalLM, batch: dict, vis: torch.Tensor, seed: int | None = None, **kwargs) -> torch.Tensor:
    if seed is not None:
        torch.manual_seed(seed)
    return lm.generate(
        batch["prompt_ids"], batch["prompt_attention_mask"], vis, max_new_tokens=NEW_TOKENS, **kwargs
    ).sequences


# ----------------------------------------------------------------------- repetition penalty


@pytest.mark.parametrize("penalty", [1.5, 5.0])
def test_repetition_penalty_changes_greedy_output_as_the_hf_processor_does(tok_dir, penalty):
    lm = tiny_lm(tok_dir)
    batch, vis = unpadded_prompts(lm), visual()
    plain = generate(lm, batch, vis)
    assert torch.equal(plain, by_hand(lm, batch, vis, []))
    penalised = generate(lm, batch, vis, repetition_penalty=penalty)
    assert torch.equal(penalised, by_hand(lm, batch, vis, [RepetitionPenaltyLogitsProcessor(penalty)]))
    assert not torch.equal(penalised, plain)  # the random tiny LM repeats itself without it


# transformers 5 gives its repetition penalty prompt_ignore_length = the row's left padding; with
# inputs_embeds its input_ids hold only generated tokens, so without rsvlm's own processor a padded
# row's first k generated tokens escaped the penalty (the 5.0 case failed before that fix).
@pytest.mark.parametrize("penalty", [1.0, 5.0])
def test_a_samples_greedy_output_does_not_depend_on_its_batch(tok_dir, penalty):
    """Each prompt generates the same tokens alone as in a batch where it is left-padded."""
    lm = tiny_lm(tok_dir)
    batch, vis = lm.formatter(INSTRUCTIONS, RESPONSES), visual()
    lengths = batch["prompt_attention_mask"].sum(1)
    assert lengths[0] < lengths[1]  # row 0 gets left padding in the batch
    together = generate(lm, batch, vis, repetition_penalty=penalty)
    for i in range(2):
        keep = batch["prompt_attention_mask"][i].bool()
        row = {k: batch[k][i : i + 1, keep] for k in ("prompt_ids", "prompt_attention_mask")}
        alone = generate(lm, row, vis[i : i + 1], repetition_penalty=penalty)[0]
        assert torch.equal(together[i, : alone.numel()], alone), (i, together[i].tolist(), alone.tolist())


# ----------------------------------------------------------------------- top-p

#: Tokens the rigged head can produce: fewer than transformers' default top_k (50, added by
#: generate when top_k is unset), so that top-k removes nothing and only temperature and top-p act.
N_LIVE = 40


def rigged_lm(tok_dir: str) -> CausalLM:
    """The tiny LM with an untied output layer: random weights, and a bias that leaves N_LIVE
    tokens (no end token) possible."""
    lm = tiny_lm(tok_dir)
    vocab = len(lm.tokenizer)
    g = torch.Generator().manual_seed(5)
    stop = {lm.end_token_id, lm.tokenizer.eos_token_id}
    live = [i for i in torch.randperm(vocab, generator=g).tolist() if i not in stop][:N_LIVE]
    head = torch.nn.Linear(WIDTH, vocab, bias=True)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, WIDTH, generator=g) * 0.5)
        head.bias.fill_(-1e4)
        head.bias[live] = 0.0
    lm.base_model.config.tie_word_embeddings = False
    lm.base_model.lm_head = head
    return lm


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 0.5), (0.7, 0.8)])
def test_top_p_changes_sampled_output_as_the_hf_warper_does(tok_dir, temperature, top_p):
    lm = rigged_lm(tok_dir)
    batch, vis = unpadded_prompts(lm), visual()
    warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)]
    changed = False
    for seed in range(3):
        nucleus = generate(lm, batch, vis, seed, do_sample=True, temperature=temperature, top_p=top_p)
        torch.manual_seed(seed)
        assert torch.equal(nucleus, by_hand(lm, batch, vis, warpers, sample=True)), seed
        full = generate(lm, batch, vis, seed, do_sample=True, temperature=temperature, top_p=1.0)
        torch.manual_seed(seed)
        assert torch.equal(full, by_hand(lm, batch, vis, [TemperatureLogitsWarper(temperature)], sample=True))
        changed |= not torch.equal(nucleus, full)
    assert changed, "top_p did not change what was sampled"


def test_a_vanishing_top_p_samples_the_greedy_tokens(tok_dir):
    """Top-p keeps the smallest set of most likely tokens reaching the mass: near 0, the argmax alone."""
    lm = rigged_lm(tok_dir)
    batch, vis = unpadded_prompts(lm), visual()
    greedy = generate(lm, batch, vis)
    for seed in range(3):
        assert torch.equal(generate(lm, batch, vis, seed, do_sample=True, temperature=1.0, top_p=1e-6), greedy)
    # not vacuous: the same sampling without top-p leaves the greedy path
    assert any(
        not torch.equal(generate(lm, batch, vis, seed, do_sample=True, temperature=1.0, top_p=1.0), greedy)
        for seed in range(3)
    )

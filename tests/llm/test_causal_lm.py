"""CausalLM: splicing into the model, response-only loss, LoRA/freezing, loading, generation, meta builds."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_QWEN2_CONFIG

from rsvlm.data.spie.corpus import SpieDemoTokenizer, build_demo_tokenizer
from rsvlm.llm.causal_lm import CausalLM, generation_masks, load_config_dict
from rsvlm.llm.lora import LoraSettings

TINY = TINY_QWEN2_CONFIG
INSTRUCTIONS = ["Segment the water.", "Find all buildings in the scene and describe them."]
RESPONSES = ["A small pond lies in the top-left.", "Large buildings at the bottom-right cover 35% of the image."]
N_VISUAL = 5


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tok") / "demo"
    build_demo_tokenizer(folder)
    return str(folder)


def tiny_lm(tok_dir: str | SpieDemoTokenizer, seed: int = 0, **kwargs) -> CausalLM:
    torch.manual_seed(seed)
    kwargs.setdefault("freeze", False)
    return CausalLM(config=dict(TINY), tokenizer=tok_dir, **kwargs).eval()


def visual(b: int = 2, d: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, N_VISUAL, d, generator=torch.Generator().manual_seed(seed))


def test_special_tokens_are_single_ids_and_fit_the_embeddings(tok_dir) -> None:
    lm = tiny_lm(tok_dir, special_tokens=["<image>", "[SEG]"])
    tok = lm.tokenizer
    assert set(lm.special_token_ids) == {"<image>", "[SEG]"}
    for token, token_id in lm.special_token_ids.items():
        assert tok.convert_tokens_to_ids(token) == token_id
        ids = tok(f"the water {token} is here", add_special_tokens=False)["input_ids"]
        assert ids.count(token_id) == 1
        assert token not in tok.decode([i for i in ids if i != token_id])
    assert lm.image_token_id == lm.special_token_ids["<image>"]
    assert lm.model.get_input_embeddings().weight.shape[0] == len(tok)  # vocab linked to the tokenizer
    assert lm.hidden_size == 32


def test_forward_splices_visual_tokens_into_the_model(tok_dir) -> None:
    lm = tiny_lm(tok_dir, loss_positions="all")  # logits at every position, labels or not
    batch = lm.formatter(INSTRUCTIONS, RESPONSES)
    vis = visual()
    out = lm(batch["input_ids"], batch["attention_mask"], vis, batch["labels"], batch["response_mask"])
    b, length = batch["input_ids"].shape
    width = length + N_VISUAL - 1
    assert out.logits.shape == (b, width, len(lm.tokenizer))
    assert out.hidden_states.shape == (b, width, 32)
    assert out.attention_mask.shape == out.response_mask.shape == (b, width)
    emb = lm.model.get_input_embeddings()
    for i in range(b):
        # Reference: the sample alone, unpadded, spliced by hand, through the plain HF model.
        n = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i, :n]
        p = int((ids == lm.image_token_id).nonzero())
        embeds = torch.cat([emb(ids[:p]), vis[i], emb(ids[p + 1 :])])[None]
        ref = lm.model(inputs_embeds=embeds, output_hidden_states=True)
        torch.testing.assert_close(
            out.hidden_states[i, : n + N_VISUAL - 1], ref.hidden_states[-1][0], atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(out.logits[i, : n + N_VISUAL - 1], ref.logits[0], atol=1e-5, rtol=1e-4)
        # The response mask moved with the splice: it marks exactly the response tokens.
        resp = batch["input_ids"][i][batch["response_mask"][i]]
        spliced_ids = torch.cat([ids[:p], torch.full((N_VISUAL,), -1), ids[p + 1 :]])
        assert torch.equal(spliced_ids[out.response_mask[i, : n + N_VISUAL - 1]], resp)


@pytest.mark.parametrize("loss_positions", ["targets", "all"])
def test_text_loss_is_cross_entropy_on_response_tokens(tok_dir, loss_positions) -> None:
    lm = tiny_lm(tok_dir, loss_positions=loss_positions)
    batch = lm.formatter(INSTRUCTIONS, RESPONSES)
    out = lm(batch["input_ids"], batch["attention_mask"], visual(), batch["labels"], batch["response_mask"])
    full = tiny_lm(tok_dir, loss_positions="all")(batch["input_ids"], batch["attention_mask"], visual()).logits
    end_id = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    logits, targets = [], []
    for i in range(2):
        ids = batch["input_ids"][i]
        answer = lm.tokenizer(RESPONSES[i], add_special_tokens=False)["input_ids"] + [end_id]
        # Response (and closing token) positions in the unspliced sequence, shifted by the splice.
        start = int(batch["prompt_attention_mask"][i].sum()) + N_VISUAL - 1
        positions = torch.arange(start, start + len(answer))
        logits.append(full[i, positions - 1])  # position t-1 predicts token t
        targets.append(torch.tensor(answer))
        assert ids[start - N_VISUAL + 1 : start - N_VISUAL + 1 + len(answer)].tolist() == answer
    expected = F.cross_entropy(torch.cat(logits), torch.cat(targets))
    torch.testing.assert_close(out.loss, expected)
    assert lm(batch["input_ids"], batch["attention_mask"], visual()).loss is None
    with pytest.raises(ValueError, match="CausalLM.loss_positions: must be one of targets, all"):
        tiny_lm(tok_dir, loss_positions="response")


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4, alpha=8)], ids=["full", "lora"])
def test_the_lm_head_runs_only_where_a_target_follows_and_trains_the_same(tok_dir, lora) -> None:
    """loss_positions "targets" computes logits at the positions before a target only (a brute-force
    scan of the labels finds them); they, the loss and every gradient equal the full pass's."""
    passes = {}
    for positions in ("targets", "all"):
        lm = tiny_lm(tok_dir, loss_positions=positions, lora=lora, freeze=lora is not None).train()
        batch = lm.formatter(INSTRUCTIONS, RESPONSES)
        out = lm(batch["input_ids"], batch["attention_mask"], visual(), batch["labels"], batch["response_mask"])
        out.loss.backward()
        grads = {n: p.grad for n, p in lm.named_parameters() if p.requires_grad}
        passes[positions] = (out, grads)
    (kept, kept_grads), (full, full_grads) = passes["targets"], passes["all"]
    labels = full.labels
    expected = [t for t in range(labels.shape[1] - 1) if any(labels[b, t + 1] != -100 for b in range(labels.shape[0]))]
    assert kept.logit_positions.tolist() == expected and full.logit_positions is None
    assert kept.logits.shape == (2, len(expected), full.logits.shape[-1])
    torch.testing.assert_close(kept.logits, full.logits[:, expected])
    torch.testing.assert_close(kept.hidden_states, full.hidden_states)
    torch.testing.assert_close(kept.loss, full.loss)
    assert kept_grads.keys() == full_grads.keys() and kept_grads
    for name, grad in kept_grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def trainable_names(lm: CausalLM) -> set[str]:
    return {n for n, p in lm.named_parameters() if p.requires_grad}


def one_step(lm: CausalLM) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    lm.train()
    batch = lm.formatter(INSTRUCTIONS, RESPONSES)
    vis = visual()
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    lm(batch["input_ids"], batch["attention_mask"], vis, batch["labels"], batch["response_mask"]).loss.backward()
    opt.step()
    return {n: p for n, p in before.items() if not torch.equal(p, dict(lm.named_parameters())[n])}


def test_lora_freezes_the_base_and_trains_only_adapters(tok_dir) -> None:
    lm = tiny_lm(
        tok_dir, freeze=True, lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    )
    trainable = trainable_names(lm)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # 2 layers × 2 targets × (A, B)
    assert len(trainable) == 8
    changed = one_step(lm)
    assert changed and set(changed) <= trainable


def test_freezing_switches(tok_dir) -> None:
    assert trainable_names(tiny_lm(tok_dir, freeze=True)) == set()
    full = tiny_lm(tok_dir, freeze=False)
    assert trainable_names(full) == {n for n, _ in full.named_parameters()}
    with pytest.raises(ValueError, match="freeze=True"):
        tiny_lm(tok_dir, freeze=False, lora=LoraSettings())


def test_new_token_embeddings_train_alone(tok_dir) -> None:
    lm = tiny_lm(tok_dir, freeze=True, special_tokens=["<image>", "[SEG]"], train_new_token_embeddings=True)
    assert trainable_names(lm)  # a trainable-token delta, nothing else
    seg, img = lm.special_token_ids["[SEG]"], lm.image_token_id
    probe = torch.tensor([[seg, img, 3, 10, 100]])
    before = lm.embed(probe).detach().clone()
    lm.train()
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-1, weight_decay=0.1)
    ids = torch.tensor([[5, seg, 6, seg]])
    out = lm(ids, torch.ones_like(ids), labels=ids)
    out.loss.backward()
    opt.step()
    after = lm.embed(probe).detach()
    assert not torch.equal(after[0, 0], before[0, 0])  # [SEG] row trained
    torch.testing.assert_close(after[0, 1:], before[0, 1:], rtol=0, atol=0)  # every other row untouched


def test_save_and_load_through_a_folder(tok_dir, tmp_path) -> None:
    lm = tiny_lm(tok_dir, special_tokens=["<image>", "[SEG]"])
    lm.base_model.save_pretrained(tmp_path / "lm")
    lm.tokenizer.save_pretrained(tmp_path / "lm")
    loaded = CausalLM(model=str(tmp_path / "lm"), special_tokens=["<image>", "[SEG]"], freeze=False).eval()
    assert loaded.special_token_ids == lm.special_token_ids
    batch = lm.formatter(INSTRUCTIONS, RESPONSES)
    args = (batch["input_ids"], batch["attention_mask"], visual(), batch["labels"])
    a, b = lm(*args), loaded(*args)
    torch.testing.assert_close(b.logits, a.logits)
    torch.testing.assert_close(b.loss, a.loss)


def test_missing_weights_name_what_to_download(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        CausalLM(model=str(tmp_path), tokenizer=SpieDemoTokenizer())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CausalLM(model="./no/such/folder")


def test_generate_shapes_and_hidden_states_equal_a_forward(tok_dir) -> None:
    lm = tiny_lm(tok_dir)
    batch = lm.formatter(INSTRUCTIONS, RESPONSES)
    vis = visual()
    gen = lm.generate(batch["prompt_ids"], batch["prompt_attention_mask"], vis, max_new_tokens=7)
    b, t = gen.sequences.shape
    assert b == 2 and 1 <= t <= 7
    assert gen.hidden_states.shape == (2, t, 32)
    assert gen.mask.shape == gen.response_mask.shape == (2, t) and gen.mask.dtype == torch.bool
    assert len(gen.texts) == 2
    for i in range(2):
        keep = int(gen.mask[i].sum())
        prompt = batch["prompt_ids"][i][batch["prompt_attention_mask"][i].bool()]
        ids = torch.cat([prompt, gen.sequences[i, :keep]])[None]
        ref = lm(ids, torch.ones_like(ids), vis[i : i + 1])
        start = prompt.numel() + N_VISUAL - 1
        torch.testing.assert_close(gen.hidden_states[i, :keep], ref.hidden_states[0, start:], atol=1e-4, rtol=1e-4)
        # Greedy decoding: each generated token is the argmax of the teacher-forced logits.
        assert torch.equal(ref.logits[0, start - 1 : -1].argmax(-1), gen.sequences[i, :keep])
        assert gen.texts[i] == lm.tokenizer.decode(gen.sequences[i][gen.response_mask[i]], skip_special_tokens=True)


def test_a_static_cache_generates_what_the_default_cache_does(tok_dir, monkeypatch) -> None:
    lm = tiny_lm(tok_dir, seed=4)
    batch = lm.formatter(INSTRUCTIONS, RESPONSES)  # two prompt lengths: the shorter is left-padded
    args = (batch["prompt_ids"], batch["prompt_attention_mask"], visual())
    default = lm.generate(*args, max_new_tokens=9)
    # The setting reaches transformers' generate, which then decodes into a StaticCache.
    hf_generate, seen = lm.model.generate, {}

    def spy(*a, generation_config, **kw):
        seen["config"] = generation_config
        return hf_generate(*a, generation_config=generation_config, **kw)

    monkeypatch.setattr(lm.model, "generate", spy)
    caches = set()  # the decode steps' cache (transformers 5.2x calls the argument `cache`)
    hook = lm.base_model.register_forward_pre_hook(
        lambda module, a, kw: caches.add(type(kw.get("cache", kw.get("past_key_values"))).__name__), with_kwargs=True
    )
    static = lm.generate(*args, max_new_tokens=9, cache_implementation="static")
    hook.remove()
    assert seen["config"].cache_implementation == "static"
    assert "StaticCache" in caches, caches
    assert torch.equal(static.sequences, default.sequences) and static.texts == default.texts
    torch.testing.assert_close(static.hidden_states, default.hidden_states, atol=1e-5, rtol=1e-5)
    lm.generate(*args, max_new_tokens=9)
    assert seen["config"].cache_implementation is None
    dynamic = lm.generate(*args, max_new_tokens=9, cache_implementation="dynamic")  # the default, named
    assert torch.equal(dynamic.sequences, default.sequences)


def test_generation_masks_stop_at_the_first_end_token() -> None:
    seq = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 2, 7, 0], [5, 6, 7, 8, 9], [3, 5, 6, 7, 8]])
    mask, response = generation_masks(seq, stop_ids=[2, 3])
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, False, False, False],
        [True] * 5,
        [True, False, False, False, False],
    ]
    assert response.tolist() == [
        [True, True, False, False, False],
        [True, False, False, False, False],
        [True] * 5,
        [False] * 5,
    ]


def test_generation_stops_at_the_end_token(tok_dir) -> None:
    lm = tiny_lm(tok_dir, seed=3)
    # Rig the output layer (a separate head with a bias) so that <|im_end|> always wins.
    vocab = len(lm.tokenizer)
    head = torch.nn.Linear(32, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[lm.end_token_id] = 10.0
    lm.base_model.config.tie_word_embeddings = False
    lm.base_model.lm_head = head
    batch = lm.formatter(INSTRUCTIONS, RESPONSES)
    gen = lm.generate(batch["prompt_ids"], batch["prompt_attention_mask"], visual(), max_new_tokens=5)
    assert gen.sequences.shape == (2, 1) and (gen.sequences == lm.end_token_id).all()
    assert gen.mask.all() and not gen.response_mask.any()
    assert gen.texts == ["", ""]


def test_meta_device_parameter_count_of_qwen2_5_1_5b() -> None:
    with torch.device("meta"):
        lm = CausalLM(config="qwen2.5-1.5b")
    total = sum(p.numel() for p in lm.parameters())
    assert abs(total - 1.54e9) / 1.54e9 < 0.01
    assert next(lm.parameters()).device.type == "meta"
    assert lm.hidden_size == 1536


def test_meta_device_from_a_hub_id_uses_the_shipped_config() -> None:
    # No weights, no tokenizer in any cache, no network: the architecture comes with rsvlm.
    with torch.device("meta"):
        lm = CausalLM(model="Qwen/Qwen2.5-0.5B", lora=LoraSettings())
    cfg = lm.base_model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (896, 24, 151936)
    assert all(".lora_" in n for n, p in lm.named_parameters() if p.requires_grad)


def test_shipped_configs_and_overrides() -> None:
    q = load_config_dict("qwen2.5-1.5b")
    assert (q["hidden_size"], q["intermediate_size"], q["num_hidden_layers"]) == (1536, 8960, 28)
    assert (q["num_attention_heads"], q["num_key_value_heads"], q["vocab_size"]) == (12, 2, 151936)
    assert q["tie_word_embeddings"] is True
    small = load_config_dict({"base": "qwen2.5-3b", "num_hidden_layers": 2})
    assert (small["hidden_size"], small["num_hidden_layers"], small["model_type"]) == (2048, 2, "qwen2")
    with pytest.raises(FileNotFoundError, match="shipped config"):
        load_config_dict("qwen9-7b")


def test_demo_tokenizer_by_name_uses_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RSVLM_CACHE", str(tmp_path))
    lm = tiny_lm(SpieDemoTokenizer())
    assert (tmp_path / "demo-tokenizer" / "tokenizer.json").is_file()
    assert lm.model.config.vocab_size == len(lm.tokenizer)


def test_vocab_size_links_to_the_tokenizer_for_dict_configs(tok_dir) -> None:
    with torch.device("meta"):
        custom = CausalLM(config={"base": "qwen2.5-0.5b", "num_hidden_layers": 1}, tokenizer=tok_dir)
        stated = CausalLM(
            config={"base": "qwen2.5-0.5b", "num_hidden_layers": 1, "vocab_size": 4096}, tokenizer=tok_dir
        )
        exact = CausalLM(config="qwen2.5-0.5b", tokenizer=tok_dir)
    assert custom.model.get_input_embeddings().weight.shape[0] == len(custom.tokenizer)
    assert stated.model.get_input_embeddings().weight.shape[0] == 4096
    assert exact.model.get_input_embeddings().weight.shape[0] == 151936


def test_meta_device_vicuna_7b_with_geomags_lora() -> None:
    """LLaVA-1.5-7B's language model (Vicuna-7B v1.5 = the Llama-2-7B architecture) with GeoMag's
    LoRA r=8 on q_proj and v_proj: the base has Llama-2-7B's published 6,738,415,616 parameters and
    the adapters 2 · 8 · 4096 per module × 2 modules × 32 layers."""
    with torch.device("meta"):
        lm = CausalLM(
            model="lmsys/vicuna-7b-v1.5", lora=LoraSettings(r=8, alpha=16, target_modules=["q_proj", "v_proj"])
        )
    adapters = sum(p.numel() for n, p in lm.named_parameters() if ".lora_" in n)
    base = sum(p.numel() for n, p in lm.named_parameters() if ".lora_" not in n)
    assert base == 6_738_415_616
    assert adapters == 2 * 8 * 4096 * 2 * 32 == 4_194_304
    assert lm.base_model.config.model_type == "llama" and lm.hidden_size == 4096

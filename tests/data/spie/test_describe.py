"""Response generators: the offline attribute describer and a tiny local HF image-text model."""

import pickle

import numpy as np
import pytest

from rsvlm.data.spie.describe import AttributeDescriber, HFImageTextDescriber, ResponseGenerator, rgb_composite

BANDS = "gaofen2"  # blue, green, red, nir


def _image(h=40, w=60, seed=0):
    return np.random.default_rng(seed).uniform(0.05, 0.4, size=(4, h, w)).astype(np.float32)


def test_describes_count_size_location_and_coverage():
    mask = np.zeros((40, 60), bool)
    mask[25:40, 40:60] = True  # 300 px = 12.5% → "medium" (0.1221 < S ≤ 0.2441), bottom-right
    mask[2:4, 2:4] = True  # 4 px → "very tiny", top-left
    img = _image()
    img[3][mask] = 0.6  # high NIR inside → NDVI higher inside
    text = AttributeDescriber()(img, mask, "vegetation", BANDS)
    assert isinstance(AttributeDescriber(), ResponseGenerator)
    assert "two" in text.lower() and "vegetation" in text
    assert "13%" in text  # (300 + 4) / 2400 = 12.7%
    assert "medium" in text and "bottom-right corner" in text
    assert "very tiny" in text and "top-left corner" in text
    g = img.astype(np.float64)
    ndvi = (g[3] - g[2]) / (g[3] + g[2])
    assert f"{ndvi[mask].mean():.2f}" in text and f"{ndvi[~mask].mean():.2f}" in text


def test_single_region_and_empty_mask():
    img = _image()
    one = np.zeros((40, 60), bool)
    one[10:30, 20:40] = True  # 400 px = 16.7% → "medium", centroid (29.5, 19.5) → center
    text = AttributeDescriber(mention_index=False)(img, one, "water", BANDS)
    assert "medium" in text and "the center" in text and "17%" in text
    empty = AttributeDescriber()(img, np.zeros((40, 60), bool), "buildings", BANDS)
    assert "building" in empty and empty.split()[0] in {"There", "No", "The"}
    demo = AttributeDescriber(distinct_empty_openings=True)(img, np.zeros((40, 60), bool), "buildings", BANDS)
    assert "building" in demo and demo.split()[0] in {"No", "None", "Nowhere"}


def test_empty_answers_open_unlike_any_other():
    """Greedy decoding chooses the empty answer only when it is likelier than the single most
    likely other opening, never against one number word of a split count."""
    from rsvlm.data.spie.describe import NUMBER_WORDS

    img = _image()
    rng = np.random.default_rng(5)
    masks = [rng.random((40, 60)) > t for t in (0.5, 0.8, 0.95, 0.99, 0.997, 0.999)]
    masks += [np.zeros((40, 60), bool)]
    openings: dict[bool, set[str]] = {True: set(), False: set()}
    for seed in range(12):
        for mask in masks:
            for category in ("vegetation", "water", "building"):
                led = AttributeDescriber(seed=seed, category_first=True, distinct_empty_openings=True)(
                    img, mask, category, BANDS
                )
                openings[bool(mask.any())].add(led.split(", ", 1)[1].split()[0])
    assert openings[False] == {"no", "none", "nowhere"}
    assert len(openings[True]) >= 3
    assert not openings[True] & openings[False], openings
    assert not openings[True] & set(NUMBER_WORDS), openings[True]


def test_deterministic_per_input_and_seed_varies_phrasing():
    img = _image()
    rng = np.random.default_rng(3)
    masks = [rng.random((40, 60)) > t for t in (0.5, 0.7, 0.9, 0.95, 0.99)]
    d = AttributeDescriber(seed=0)
    first = [d(img, m, "water", BANDS) for m in masks]
    assert [d(img, m, "water", BANDS) for m in reversed(masks)] == first[::-1]
    other = [AttributeDescriber(seed=s)(img, masks[0], "water", BANDS) for s in range(1, 9)]
    assert len(set(other + first[:1])) > 1
    assert pickle.loads(pickle.dumps(d))(img, masks[1], "water", BANDS) == first[1]


def test_category_comes_first_only_when_turned_on():
    img = _image()
    rng = np.random.default_rng(4)
    masks = [np.zeros((40, 60), bool)] + [rng.random((40, 60)) > t for t in (0.6, 0.9, 0.995)]
    for category in ("vegetation", "water", "building"):
        for mask in masks:
            led = AttributeDescriber(category_first=True)(img, mask, category, BANDS)
            plain = AttributeDescriber()(img, mask, category, BANDS)
            # The category is the first content word; the rest is the plain text, lower-cased.
            opening = led.split(",")[0]
            assert opening in {f"As for {category}", f"Regarding {category}", f"Looking at {category}"}
            assert category not in plain.split()[0]
            rest = led[len(opening) + 2 :]
            assert rest == plain[0].lower() + plain[1:]


def test_many_regions_mentions_the_rest():
    mask = np.zeros((40, 60), bool)
    for i in range(8):
        mask[5, 2 + 7 * i : 4 + 7 * i] = True
    text = AttributeDescriber(max_regions=3)(_image(), mask, "building", BANDS)
    assert "eight" in text.lower() and "five smaller ones" in text and "less than 1%" in text


def test_rgb_composite_uses_named_bands_and_percentile_stretch():
    img = _image(seed=5)
    rgb = rgb_composite(img, BANDS)
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
    red = img[2]  # gaofen2: red is band 2
    lo, hi = np.percentile(red, (2, 98))
    expected = np.clip((red - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    # Invalid pixels are black.
    valid = np.ones((40, 60), bool)
    valid[0, 0] = False
    assert (rgb_composite(img, BANDS, valid)[0, 0] == 0).all()


# ---- Hugging Face image-text-to-text, tiny random LLaVA saved to a temp folder ----------------


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["the water regions lie in the top left of the image"] * 10, trainer)
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    template = (
        "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
        "{% endfor %} {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    processor = tf.LlavaProcessor(
        image_processor=tf.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=fast,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=template,
        num_additional_image_tokens=1,
    )
    vision = tf.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    text = tf.LlamaConfig(
        vocab_size=len(fast),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    config = tf.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=fast.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_llava")
    tf.LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_hf_describer_generates_with_paper_sampling(tiny_llava):
    img = _image()
    mask = np.zeros((40, 60), bool)
    mask[5:20, 5:25] = True
    d = HFImageTextDescriber(tiny_llava, max_new_tokens=6, seed=1, local_files_only=True)
    processor, model = d.load()
    calls = []
    real_generate = model.generate

    def spy(**kw):
        res = real_generate(**kw)
        calls.append((kw, res))
        return res

    model.generate = spy
    out = d(img, mask, "water", BANDS)
    assert isinstance(out, str)
    kw, res = calls[0]
    assert kw["temperature"] == 0.8 and kw["top_p"] == 0.9 and kw["do_sample"] is True
    assert kw["max_new_tokens"] == 6 and "pixel_values" in kw
    # The prompt carries the true mask's attributes; the answer has at most 6 new tokens.
    prompt = processor.batch_decode(kw["input_ids"], skip_special_tokens=True)[0]
    assert "Size of area" in prompt and "water" in prompt
    assert 0 < res.shape[1] - kw["input_ids"].shape[1] <= 6
    # Seeded: same input, same answer; pickling drops the weights and reloads them.
    assert d(img, mask, "water", BANDS) == out
    clone = pickle.loads(pickle.dumps(d))
    assert clone._model is None
    assert clone(img, mask, "water", BANDS) == out


def test_hf_describer_missing_model_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    d = HFImageTextDescriber(str(tmp_path / "no_such_model"), local_files_only=True)
    with pytest.raises(OSError, match="no_such_model.*local folder"):
        d.load()

"""``SS`` (rsvlm.training.metrics.similarity) on a tiny random BERT sentence model saved to a temp folder.

No hub is touched: the BERT, its WordPiece vocabulary and the sentence-transformers wrapper are all
written here. The numbers are plumbing (random weights), checked against ``sentence_transformers.util``
on the pre-processed strings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from rsvlm.training.metrics import similarity
from rsvlm.training.metrics.answers import AnswerAccuracy
from rsvlm.training.metrics.similarity import SemanticSimilarity
from rsvlm.training.metrics.text import roc_pairs, semantic_iou

WORDS = "ship storage tank vehicle airport harbor bridge dam golf field stadium train station a big small the region"
PREDICTIONS = ["Category: storage tank.", "a ship", "Region 1: vehicle\nRegion 2: golf, field", "airport"]
REFERENCES = ["storage_tank", "ship", "Region 1: vehicle\nRegion 2: golf_field", "harbor"]


@pytest.fixture(scope="module")
def sentence_model(tmp_path_factory) -> str:
    """A tiny random BERT + mean pooling, saved as a sentence-transformers folder."""
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed (rsvlm[metrics])")
    from sentence_transformers import models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-sbert")
    bert = root / "bert"
    bert.mkdir()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = list(dict.fromkeys([*special, *WORDS.split(), *".,:_()", *"abcdefghijklmnopqrstuvwxyz"]))
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(bert / "vocab.txt"), do_lower_case=True).save_pretrained(bert)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(bert)
    transformer = models.Transformer(str(bert))
    model = st.SentenceTransformer(modules=[transformer, models.Pooling(32, "mean")], device="cpu")
    folder = root / "sbert"
    model.save(str(folder))
    return str(folder)


def reference_ss(folder: str, predictions: list[str], references: list[str]) -> float:
    """The mean of util.cos_sim over the pre-processed region pairs, each text encoded on its own."""
    import sentence_transformers as st

    model = st.SentenceTransformer(folder, device="cpu")
    pairs = [pair for p, r in zip(predictions, references) for pair in roc_pairs(p, r)]
    cosines = [
        float(st.util.cos_sim(model.encode(p, convert_to_tensor=True), model.encode(g, convert_to_tensor=True)))
        for p, g in pairs
    ]
    return sum(cosines) / len(cosines)


def test_pre_processing_is_ospreys_and_pairs_regions():
    assert roc_pairs("Category: storage tank.", "storage_tank") == [("storage tank", "storage tank")]
    assert roc_pairs("a ship, big", "ship:boat") == [("a ship  big", "ship boat")]
    assert roc_pairs("Region 2: golf field\nRegion 1: ship.", "Region 1: ship\nRegion 2: golf_field") == [
        ("ship", "ship"),
        ("golf field", "golf field"),
    ]
    # Unnumbered lines pair by position; a region left unanswered pairs with an empty prediction.
    assert roc_pairs("ship", "Region 1: ship\nRegion 2: dam") == [("ship", "ship"), ("", "dam")]
    assert semantic_iou(["Region 1: ship\nRegion 2: dam"], ["Region 1: ship\nRegion 2: golf_field"]) == 0.5


def test_ss_is_the_mean_cos_sim_of_the_pre_processed_pairs(sentence_model):
    metric = SemanticSimilarity(sentence_model)
    metric.update(PREDICTIONS[:2], REFERENCES[:2])
    metric.update(PREDICTIONS[2:], REFERENCES[2:])
    assert int(metric.count) == 5  # the two-region answer counts twice
    want = reference_ss(sentence_model, PREDICTIONS, REFERENCES)
    assert float(metric.compute()) == pytest.approx(want, rel=1e-5)
    assert float(metric.compute()) < 1 - 1e-5  # the airport/harbor pair differs
    # The sentence model is no submodule: nothing of it in the metric's (or a holder's) state_dict.
    assert list(metric.children()) == [] and len(torch.nn.ModuleDict({"ss": metric}).state_dict()) == 0


def test_ss_of_identical_answers_is_1(sentence_model):
    metric = SemanticSimilarity(sentence_model)
    same = ["storage tank", "a big ship", "Region 1: vehicle\nRegion 2: golf field", "harbor"]
    metric.update(same, same)
    metric.update(["storage tank", "Region 1: golf field"], ["storage_tank", "Region 1: golf_field"])
    assert float(metric.compute()) == pytest.approx(1.0, abs=1e-6)


def test_merged_states_equal_one_metric_over_all(sentence_model):
    whole, first, second = (SemanticSimilarity(sentence_model) for _ in range(3))
    whole.update(PREDICTIONS, REFERENCES)
    first.update(PREDICTIONS[:1], REFERENCES[:1])
    second.update(PREDICTIONS[1:], REFERENCES[1:])
    # What the DDP reduction does: each state summed over the processes.
    summed = {name: getattr(first, name) + getattr(second, name) for name in ("cosine", "count")}
    assert float(summed["cosine"] / summed["count"]) == pytest.approx(float(whole.compute()), rel=1e-6)
    # merge_state is not in every supported torchmetrics; the sums above are what DDP does either way.
    if hasattr(first, "merge_state"):
        first.merge_state(second)
        assert float(first.compute()) == pytest.approx(float(whole.compute()), rel=1e-6)


def test_missing_folder_is_a_one_line_error_naming_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^model='.*nowhere' is not a local folder") as err:
        SemanticSimilarity(str(tmp_path / "nowhere"))
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"^similarity_model='.*nowhere' is not a local folder"):
        AnswerAccuracy(similarity_model=str(tmp_path / "nowhere"))


def test_answer_accuracy_logs_ss_beside_accuracy_and_s_iou(sentence_model):
    metric = AnswerAccuracy(similarity_model=sentence_model)
    metric.update(PREDICTIONS, REFERENCES)
    got = metric.compute()
    assert set(got) == {"accuracy", "S-IoU", "accuracy_majority", "SS"}
    assert float(got["SS"]) == pytest.approx(reference_ss(sentence_model, PREDICTIONS, REFERENCES), rel=1e-5)
    assert float(got["S-IoU"]) == pytest.approx(semantic_iou(PREDICTIONS, REFERENCES)) == 3.5 / 5
    assert metric.similarity_skipped is None
    assert "SS" not in _outputs(AnswerAccuracy())


def _outputs(metric: AnswerAccuracy) -> dict[str, torch.Tensor]:
    metric.update(["ship"], ["ship"])
    return metric.compute()


def test_without_sentence_transformers_no_ss_and_one_warning(monkeypatch, tmp_path, recwarn):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # `import sentence_transformers` fails
    monkeypatch.setattr(similarity, "_WARNED", set())
    folder = Path(tmp_path)
    metrics = [AnswerAccuracy(similarity_model=str(folder)) for _ in range(3)]
    warned = [w for w in recwarn.list if "SS not logged" in str(w.message)]
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "sentence-transformers" in message and "rsvlm[metrics]" in message and "\n" not in message
    assert all(m.similarity_skipped == message for m in metrics)
    assert "SS" not in _outputs(metrics[0])


def test_the_model_passes_similarity_model_to_its_answer_metrics(sentence_model):
    from conftest import tiny_spex_components

    from rsvlm.models.task_scoring import GROUPED, build_task_metrics
    from rsvlm.models.vlm import VisionLanguageModel

    metrics = build_task_metrics(["refer", "cls"], {"refer": "referring", "cls": "answer"}, "global")
    assert metrics["val"]["cls"].similarity_model is None
    settings = {
        "tasks": ["refer", "cls"],
        "task_metrics": {"refer": "referring", "cls": "answer"},
        "metric_groups": {"source": ["dior_rsvg"]},
    }
    model = VisionLanguageModel(**tiny_spex_components(), **settings, similarity_model=sentence_model)
    answers = [m for m in model.metrics.modules() if isinstance(m, AnswerAccuracy)]
    assert len(answers) == 8  # 4 splits × (the task + its group)
    assert {m.similarity_model for m in answers} == {str(Path(sentence_model).resolve())}
    cls = model.metrics["test"]["cls"]
    cls.update(PREDICTIONS, REFERENCES)
    assert "SS" in cls.compute()
    plain = VisionLanguageModel(**tiny_spex_components(), **settings)
    assert set(model.state_dict()) == set(plain.state_dict())  # no sentence-model weights in checkpoints
    assert GROUPED in model.metrics["val"]

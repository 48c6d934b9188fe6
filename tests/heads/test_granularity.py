"""The task-granularity classifier: features equal transformers' BertModel, the paper's head size,
loading from a folder, and training it alone (metrics against scikit-learn)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import quiet_trainer
from sklearn.metrics import accuracy_score, f1_score
from transformers import BertConfig, BertModel

from rsvlm.data.queries import QueryDataModule, QueryError, demo_queries, read_queries, stratified_split
from rsvlm.data.spie.corpus import SpieDemoTokenizer
from rsvlm.heads.granularity import TaskGranularityClassifier
from rsvlm.models.granularity import GranularityTask

TINY_BERT = {
    "vocab_size": 1500,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}
QUERIES = ["Please segment the ship in the harbour.", "How many airplanes are there?", "Describe this image."]


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return TaskGranularityClassifier(text_encoder=TINY_BERT, tokenizer=SpieDemoTokenizer()).eval()


def test_features_are_berts_cls_state_and_masked_mean(classifier):
    reference = BertModel(BertConfig(**TINY_BERT), add_pooling_layer=False).eval()
    reference.load_state_dict(classifier.encoder.state_dict())
    inputs = classifier.tokenize(QUERIES)
    with torch.no_grad():
        hidden = reference(**inputs).last_hidden_state
        torch.testing.assert_close(classifier.features(QUERIES), hidden[:, 0])
        classifier.pooling = "mean"
        mask = inputs["attention_mask"].bool()
        want = torch.stack([hidden[i][mask[i]].mean(0) for i in range(len(QUERIES))])
        torch.testing.assert_close(classifier.features(QUERIES), want)
        classifier.pooling = "cls"
    assert classifier(QUERIES).shape == (3, 3) and set(classifier.predict(QUERIES)) <= {"image", "region", "pixel"}


def test_the_papers_head_on_768_wide_features_has_230147_parameters():
    wide = {**TINY_BERT, "hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 1}
    model = TaskGranularityClassifier(text_encoder=wide, tokenizer=SpieDemoTokenizer())
    assert sum(p.numel() for p in model.head.parameters()) == 768 * 256 + 256 + 256 * 128 + 128 + 128 * 3 + 3 == 230_147
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert not model.encoder.training and model.head.training


def test_loads_a_bert_folder_as_a_pretrained_source(classifier, tmp_path):
    classifier.encoder.save_pretrained(tmp_path / "bert")
    classifier.tokenizer.save_pretrained(tmp_path / "bert")
    loaded = TaskGranularityClassifier(text_encoder=str(tmp_path / "bert")).eval()
    assert loaded.encoder.weights_source == str(tmp_path / "bert")
    with torch.no_grad():
        torch.testing.assert_close(loaded.features(QUERIES), classifier.features(QUERIES))
    with pytest.raises(ValueError, match="needs tokenizer="):
        TaskGranularityClassifier(text_encoder=TINY_BERT)
    with pytest.raises(ValueError, match="vocab_size is 100"):
        TaskGranularityClassifier(text_encoder={**TINY_BERT, "vocab_size": 100}, tokenizer=SpieDemoTokenizer())


def test_trained_alone_its_logged_scores_are_sklearns():
    torch.manual_seed(0)
    task = GranularityTask(
        TaskGranularityClassifier(text_encoder=TINY_BERT, tokenizer=SpieDemoTokenizer(), pooling="mean", dropout=0.0),
        lr=3e-3,
    )
    data = QueryDataModule(demo=300, batch_size=32)
    trainer = quiet_trainer(max_epochs=4)
    trainer.fit(task, datamodule=data)
    logged = trainer.test(task, datamodule=data, verbose=False)[0]
    queries = data.splits["test"]
    predicted = task.classifier.predict([q["query"] for q in queries])
    truth = [q["granularity"] for q in queries]
    assert logged["test/accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-6)
    per_class = f1_score(truth, predicted, labels=["image", "region", "pixel"], average=None, zero_division=0)
    for label, value in zip(["image", "region", "pixel"], per_class):
        assert logged[f"test/F1/{label}"] == pytest.approx(value, abs=1e-6)
    assert logged["test/accuracy"] > 0.9  # the templates' wording separates the levels


def test_query_files_and_splits(tmp_path):
    records = demo_queries(90, seed=1)
    splits = stratified_split(records, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    for level in ("image", "region", "pixel"):
        assert [sum(r["granularity"] == level for r in splits[s]) for s in ("train", "val", "test")] == [24, 3, 3]
    path = tmp_path / "queries.jsonl"
    path.write_text(json.dumps(records[0]) + "\n" + json.dumps({"query": "x"}) + "\n")
    with pytest.raises(QueryError, match=r"queries.jsonl:2: field 'granularity'"):
        read_queries(path)
    path.write_text("{not json\n")
    with pytest.raises(QueryError, match=r"queries.jsonl:1: not JSON"):
        read_queries(path)
    assert np.mean([r["granularity"] == "pixel" for r in records]) == pytest.approx(1 / 3)


def test_a_classifier_run_checkpoint_loads_into_a_new_classifier(tmp_path):
    classifier = TaskGranularityClassifier(text_encoder=TINY_BERT, tokenizer=SpieDemoTokenizer())
    trained = GranularityTask(classifier)
    with torch.no_grad():
        for p in classifier.head.parameters():
            p.add_(torch.randn_like(p))
    # a checkpoint of the run, its frozen BERT left out (it is the source's)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("classifier.encoder.")}
    torch.save({"state_dict": state}, tmp_path / "last.ckpt")
    config = classifier.encoder.config.to_dict()
    fresh = TaskGranularityClassifier(
        text_encoder=config, tokenizer=SpieDemoTokenizer(), checkpoint=str(tmp_path / "last.ckpt")
    )
    for (name, got), want in zip(fresh.head.state_dict().items(), classifier.head.state_dict().values(), strict=True):
        assert torch.equal(got, want), name
    del state["classifier.head.1.weight"]
    torch.save({"state_dict": state}, tmp_path / "broken.ckpt")
    with pytest.raises(ValueError, match="TaskGranularityClassifier.checkpoint"):
        TaskGranularityClassifier(
            text_encoder=config, tokenizer=SpieDemoTokenizer(), checkpoint=str(tmp_path / "broken.ckpt")
        )

"""Metrics of the systems rsvlm assembles, each a torchmetrics ``Metric`` or a plain function.

* :mod:`~rsvlm.training.metrics.binary`: SPEX's binary segmentation scores (F1, Recall,
  Precision, OA, IoU; per image or global);
* :mod:`~rsvlm.training.metrics.referring`: referring segmentation (P@k, oIoU, mIoU);
* :mod:`~rsvlm.training.metrics.grounding`: visual grounding Acc@0.5 over boxes;
* :mod:`~rsvlm.training.metrics.text`: VQA accuracy per question type, referring-object
  classification S-IoU (and SS given a sentence embedder);
* :mod:`~rsvlm.training.metrics.answers`: short-answer accuracy, S-IoU, the majority answer's
  accuracy and (given a local sentence model) SS as a torchmetrics metric;
* :mod:`~rsvlm.training.metrics.similarity`: referring-object classification SS (sentence-embedding
  cosine through sentence-transformers, from a local folder);
* :mod:`~rsvlm.training.metrics.captions`: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D through pycocoevalcap;
* :mod:`~rsvlm.training.metrics.gcg`: grounded conversation generation AP50, mIoU and recall.
"""

from rsvlm.training.metrics.binary import METRIC_NAMES, BinarySegmentationMetrics, scores

__all__ = ["METRIC_NAMES", "BinarySegmentationMetrics", "scores"]

"""Caption metrics through pycocoevalcap: BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D.

All references of an image count. Texts are tokenised by pycocoevalcap's PTB tokenizer (Stanford
CoreNLP, which needs ``java``) unless ``tokenize=False``, when they are lowercased and split on
spaces with punctuation removed. METEOR always needs ``java``; without it the scores leave METEOR
out (say so: ``meteor_skipped``).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence


def _simple_tokens(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def caption_scores(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], tokenize: bool | None = None
) -> dict[str, float | str]:
    """Scores of ``predictions`` (image id → caption) against ``references`` (image id → captions).

    Args:
        tokenize: PTB-tokenise (default: when ``java`` is on the PATH).

    Returns:
        ``Bleu_1..4``, ``ROUGE_L``, ``CIDEr``, and ``METEOR`` when ``java`` is present (else
        ``meteor_skipped`` with the reason).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(predictions) != set(references):
        missing = sorted(set(references) ^ set(predictions))[:3]
        raise ValueError(f"caption_scores: predictions and references cover different images (e.g. {missing})")
    java = shutil.which("java") is not None
    tokenize = java if tokenize is None else tokenize
    if tokenize:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({k: [{"caption": c} for c in refs] for k, refs in references.items()})
        res = tokenizer.tokenize({k: [{"caption": predictions[k]}] for k in references})
    else:
        gts = {k: [_simple_tokens(c) for c in refs] for k, refs in references.items()}
        res = {k: [_simple_tokens(predictions[k])] for k in references}
    out: dict[str, float | str] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if java:
        from pycocoevalcap.meteor.meteor import Meteor

        out["METEOR"] = float(Meteor().compute_score(gts, res)[0])
    else:
        out["meteor_skipped"] = "METEOR needs java (apt install default-jre-headless)"
    return out

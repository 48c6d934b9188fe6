"""Instruction templates of the two systems that read instruction records.

``earthgptx`` follows the EarthGPT-X spec's §4.1 table: regions as "<Region k>" plus a visual
prompt in slot k, boxes in the text as ``<p>phrase</p>[x0,y0,x1,y1]`` (3 decimals, centre-padded
square), pixel answers as ``<p>phrase</p> [SEG]``.

``geomag`` follows the GeoMag spec: referring segmentation as LISA's first short question
("Can you segment the … in this image?") answered "Sure, [SEG]." (§2.1 step 8; the data transform
that expands ``[SEG]`` into the codebook tokens runs later), and referring-object
classification with the region written in the question as LLaVA-1.5's ``[x1, y1, x2, y2]``
(normalised on the centre-padded square, 2 decimals; §4.1).

Every first human turn starts with ``<image>\\n``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from rsvlm.data.coords import format_grounding, pad_offset

Style = Literal["earthgptx", "geomag"]
STYLES = ("earthgptx", "geomag")
IMAGE_PREFIX = "<image>\n"
_ARTICLE = re.compile(r"^(the|a|an)\s+", re.IGNORECASE)


def check_style(style: str) -> None:
    """Raise a ValueError unless ``style`` is one of :data:`STYLES`."""
    if style not in STYLES:
        raise ValueError(f"style: must be one of {', '.join(STYLES)}, got {style!r}")


def bare_expression(expression: str) -> str:
    """A referring expression ready for "the {…}": trimmed, without a leading article or final period.

    Examples: ``"The gray vehicle on the left."`` → ``"gray vehicle on the left"``.
    """
    text = " ".join(expression.split()).rstrip(" .")
    return _ARTICLE.sub("", text)


def llava_box(box: Sequence[float], size: tuple[int, int]) -> str:
    """LLaVA-1.5's region text ``[x1, y1, x2, y2]``: normalised on the centre-padded square, 2 decimals."""
    side = max(size)
    pad_x, pad_y = pad_offset(size, "center")
    values = [(v + (pad_x if i % 2 == 0 else pad_y)) / side for i, v in enumerate(box)]
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def roc_turns(style: Style, label: str, box: Sequence[float], size: tuple[int, int]) -> tuple[str, str]:
    """(human, gpt) of referring-object classification of one region (slot 1 in ``earthgptx``)."""
    check_style(style)
    if style == "earthgptx":
        question = "What is the category of <Region 1>? Answer with one word or phrase."
    else:
        question = f"What is the category of the object at {llava_box(box, size)}? Answer with one word or phrase."
    return IMAGE_PREFIX + question, label


def grounding_question(expression: str) -> str:
    """The visual-grounding question about an object: "Where is the …? Answer with its bounding box." """
    return IMAGE_PREFIX + f"Where is the {bare_expression(expression)}? Answer with its bounding box."


def grounding_turns(
    expression: str, phrase: str, boxes: Sequence[Sequence[float]], size: tuple[int, int], decimals: int = 3
) -> tuple[str, str]:
    """(human, gpt) of visual grounding: "Where is the …? Answer with its bounding box." → ``<p>…</p>[…]``
    (coordinates with ``decimals`` decimals)."""
    answer = format_grounding(phrase, [list(b) for b in boxes], size, pad="center", decimals=decimals)
    return grounding_question(expression), answer


def grounding_mask_turns(expression: str, phrase: str) -> tuple[str, str]:
    """(human, gpt) of visual grounding answered with a mask: :func:`grounding_question` →
    ``<p>phrase</p> [SEG]`` (the pixel answer form); the box is read from the decoded mask
    (:func:`rsvlm.training.metrics.grounding.mask_boxes`), as LISA-style models ground by segmenting."""
    return grounding_question(expression), f"<p>{phrase}</p> [SEG]"


def region_caption_turns(caption: str) -> tuple[str, str]:
    """(human, gpt) of a brief description of the region in slot 1."""
    text = " ".join(caption.split())
    return IMAGE_PREFIX + "Please give a brief description of <Region 1>.", text


def refseg_turns(style: Style, expression: str) -> tuple[str, str]:
    """(human, gpt) of text → mask segmentation with one ``[SEG]``."""
    check_style(style)
    bare = bare_expression(expression)
    if style == "earthgptx":
        return IMAGE_PREFIX + f"Segment the {bare}.", f"<p>{bare}</p> [SEG]"
    return IMAGE_PREFIX + f"Can you segment the {bare} in this image?", "Sure, [SEG]."

"""Converters from official dataset formats to instruction records, one module per dataset.

:data:`CONVERTERS` maps a dataset name to its function (what ``rsvlm data convert <dataset>`` calls);
each returns a list of checked :class:`~rsvlm.data.multitask.records.InstructRecord`. Names that share
a reader (the two RSVQA sets, the two caption sets, the scene folders) are that reader with its
dataset-specific argument fixed (``functools.partial``). ``sen1floods11`` also writes image tiles, so it
takes an output folder (``convert_sen1floods11(root, out)``).
"""

from collections.abc import Callable
from functools import partial

from rsvlm.data.multitask.converters.captions import convert_captions
from rsvlm.data.multitask.converters.common import ConverterError
from rsvlm.data.multitask.converters.dior_rsvg import convert_dior_rsvg
from rsvlm.data.multitask.converters.geopixeld import convert_geopixeld
from rsvlm.data.multitask.converters.mmrs import convert_mmrs
from rsvlm.data.multitask.converters.refsegrs import convert_refsegrs
from rsvlm.data.multitask.converters.rrsisd import convert_rrsisd
from rsvlm.data.multitask.converters.rsvqa import convert_rsvqa
from rsvlm.data.multitask.converters.scenes import convert_scene_folders
from rsvlm.data.multitask.converters.sen1floods11 import convert_sen1floods11

CONVERTERS: dict[str, Callable[..., list]] = {
    "aid": partial(convert_scene_folders, source="aid"),
    "dior_rsvg": convert_dior_rsvg,
    "geopixeld": convert_geopixeld,
    "mmrs1m": convert_mmrs,
    "refsegrs": convert_refsegrs,
    "resisc45": partial(convert_scene_folders, source="resisc45"),
    "rrsisd": convert_rrsisd,
    "rsvqa_hr": partial(convert_rsvqa, variant="hr"),
    "rsvqa_lr": partial(convert_rsvqa, variant="lr"),
    "sen1floods11": convert_sen1floods11,
    "sydney_captions": partial(convert_captions, source="sydney_captions"),
    "ucm_captions": partial(convert_captions, source="ucm_captions"),
    "ucm_scenes": partial(convert_scene_folders, source="ucm"),
}

__all__ = [
    "CONVERTERS",
    "ConverterError",
    "convert_captions",
    "convert_dior_rsvg",
    "convert_geopixeld",
    "convert_mmrs",
    "convert_refsegrs",
    "convert_rrsisd",
    "convert_rsvqa",
    "convert_scene_folders",
    "convert_sen1floods11",
]

"""Converters from official dataset formats to instruction records, one module per dataset.

:data:`CONVERTERS` maps a dataset name to its function (what ``rsvlm data convert <dataset>`` calls);
each returns a list of checked :class:`~rsvlm.data.multitask.records.InstructRecord`.
"""

from collections.abc import Callable

from rsvlm.data.multitask.converters.common import ConverterError
from rsvlm.data.multitask.converters.dior_rsvg import convert_dior_rsvg
from rsvlm.data.multitask.converters.mmrs import convert_mmrs
from rsvlm.data.multitask.converters.refsegrs import convert_refsegrs
from rsvlm.data.multitask.converters.rrsisd import convert_rrsisd

CONVERTERS: dict[str, Callable[..., list]] = {
    "dior_rsvg": convert_dior_rsvg,
    "mmrs1m": convert_mmrs,
    "refsegrs": convert_refsegrs,
    "rrsisd": convert_rrsisd,
}

__all__ = ["CONVERTERS", "ConverterError", "convert_dior_rsvg", "convert_mmrs", "convert_refsegrs", "convert_rrsisd"]

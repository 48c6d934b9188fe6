"""Multi-task instruction data shared by GeoMag and EarthGPT-X: one record schema, its JSON-lines
file, its checks, the instruction templates, converters from the official dataset formats
(:mod:`rsvlm.data.multitask.converters`) and the datamodule that mixes records files into batches
(:class:`rsvlm.data.multitask.datamodule.InstructDataModule`, imported from its module so that
reading and converting records does not load Lightning)."""

from rsvlm.data.multitask.jsonl import check_records, read_records, write_records
from rsvlm.data.multitask.masks import decode_mask, rle_of
from rsvlm.data.multitask.records import (
    DEFAULT_GRANULARITY,
    GRANULARITIES,
    TASKS,
    InstructRecord,
    InstructRecordError,
    Turn,
)
from rsvlm.data.multitask.validate import check_record

__all__ = [
    "DEFAULT_GRANULARITY",
    "GRANULARITIES",
    "TASKS",
    "InstructRecord",
    "InstructRecordError",
    "Turn",
    "check_record",
    "check_records",
    "decode_mask",
    "read_records",
    "rle_of",
    "write_records",
]

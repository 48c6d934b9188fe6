"""Library defaults are not demo tuning: a real SPIE build writes plain responses; only the
demo's generated data opens with the category and gives empty answers openings of their own."""

from __future__ import annotations

import pytest
import rasterio

from rsvlm.data.bands import band_spec
from rsvlm.data.generated import GeneratedData
from rsvlm.data.scenes import write_scene_folder
from rsvlm.data.spie.builder import build_spie
from rsvlm.data.spie.records import read_records
from rsvlm.data.spie.sources import SourceSpec

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

# Written out here, not imported: what the two phrasings must read like.
DEMO_LEADS = ("As for {cat}, ", "Regarding {cat}, ", "Looking at {cat}, ")
DEMO_EMPTY_WORDS = {"no", "none", "nowhere"}  # after the lead, first word lowered
PLAIN_EMPTY = (
    "There are no {cat} regions in this image.",
    "No {cat} areas can be seen in this image.",
    "The image does not contain any {cat} regions.",
)


def _is_empty(record) -> bool:
    with rasterio.open(record.mask) as src:
        return not src.read(1).any()


def _split(records) -> tuple[list, list]:
    empty = [r for r in records if _is_empty(r)]
    return empty, [r for r in records if r not in empty]


def test_a_real_build_with_default_settings_has_no_demo_phrasing(tmp_path):
    scenes = tmp_path / "scenes"
    write_scene_folder(scenes, n=6, size=32, bands="demo", seed=3, split_fractions={"train": 4, "val": 1, "test": 1})
    summary = build_spie([SourceSpec("generated", str(scenes))], tmp_path / "spie", progress=False, empty_rate=1.0)
    empty, full = _split(read_records(summary.records_path))
    assert empty and full
    for r in empty + full:
        leads = tuple(lead.format(cat=r.category) for lead in DEMO_LEADS)
        assert not r.response.startswith(leads), r.response
    for r in empty:
        assert r.response in {t.format(cat=r.category) for t in PLAIN_EMPTY}, r.response


def test_the_generated_demo_data_keeps_its_phrasing(tmp_path):
    data = GeneratedData(root=str(tmp_path), n_train=4, n_val=1, n_test=1, size=32, empty_rate=1.0)
    spec = band_spec("demo")
    data.prepare(spec, "paper")
    empty, full = _split(read_records(data.records_path(spec, "paper")))
    assert empty and full
    for r in empty + full:
        lead = next(
            (lead.format(cat=r.category) for lead in DEMO_LEADS if r.response.startswith(lead.format(cat=r.category))),
            None,
        )
        assert lead is not None, r.response
        first_word = r.response[len(lead) :].split()[0]
        assert (first_word in DEMO_EMPTY_WORDS) == (r in empty), r.response
    # The plain phrasing is an option of the generated data too, with its own cache folder.
    plain = GeneratedData(root=str(tmp_path), category_first=False, distinct_empty_openings=False)
    assert plain.folder(spec, "paper") != GeneratedData(root=str(tmp_path)).folder(spec, "paper")

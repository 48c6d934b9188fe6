"""The per-group score table `rsvlm fit` prints after its test (rsvlm/experiments/group_table.py)."""

from __future__ import annotations

from rsvlm.cli.lightning import print_group_table
from rsvlm.experiments.group_table import format_group_table, split_scores

METRICS = {
    # the first task (gcg) logs its overall scores without its name
    "test/mIoU": 0.7,
    "test/mIoU_prompt_box": 0.3,
    "test/P@0.5": 0.8,
    "test/gcg/modality=sar/mIoU": 0.6,
    "test/gcg/modality=sar/mIoU_prompt_box": 0.25,
    "test/gcg/prompt_kind=box/mIoU": 0.75,
    "test/gcg/prompt_kind=box/mIoU_prompt_box": 0.65,
    "test/grounding/Acc@0.5": 0.2,
    "test/grounding/Acc@0.5_centre_box": 0.0,
    "test/grounding/modality=sar/Acc@0.5": 0.125,
    "test/grounding/modality=sar/Acc@0.5_centre_box": 0.0,
    "test/referring_classification/accuracy": 0.9,
    "test/referring_classification/accuracy_majority": 0.27,
    "test/referring_classification/modality=sar/accuracy": 0.85,
    "test/referring_classification/modality=sar/accuracy_majority": 0.3,
    "test/referring_classification/prompt_kind=box/accuracy": 1.0,
    "test/referring_classification/prompt_kind=box/accuracy_majority": 0.25,
    "test/granularity_classifier/accuracy": 0.5,  # no groups: no column
    "test_teacher_forced/mIoU": 0.9,  # another split
    "val/mIoU": 0.1,
}
TASKS = ["gcg", "grounding", "referring_classification"]


def test_scores_are_read_per_task_and_group():
    scores = split_scores(METRICS, "test", "gcg")
    assert scores["gcg"]["all"] == {"mIoU": 0.7, "mIoU_prompt_box": 0.3, "P@0.5": 0.8}
    assert scores["gcg"]["prompt_kind=box"] == {"mIoU": 0.75, "mIoU_prompt_box": 0.65}
    assert scores["grounding"]["modality=sar"] == {"Acc@0.5": 0.125, "Acc@0.5_centre_box": 0.0}
    assert "val" not in str(scores) and scores["gcg"]["all"]["mIoU"] == 0.7  # not test_teacher_forced's 0.9


def test_the_table_has_a_row_per_group_and_the_baseline_beside_each_score():
    lines = format_group_table(METRICS, "test", "gcg", TASKS).splitlines()
    assert lines[0] == "test scores per group: model / baseline"
    header, rows = lines[1], {line.split()[0]: line for line in lines[2:]}
    assert header.split("   ")[0].strip() == "group"
    for column in ("gcg mIoU / prompt box", "grounding Acc@0.5 / centre box", "accuracy / majority"):
        assert column in header
    assert header.index("gcg") < header.index("grounding") < header.index("referring_classification")
    assert "granularity_classifier" not in header
    assert list(rows) == ["all", "modality=sar", "prompt_kind=box"]
    assert rows["all"].split()[1:] == ["0.700", "/", "0.300", "0.200", "/", "0.000", "0.900", "/", "0.270"]
    # grounding has no prompts: no prompt_kind group
    assert rows["prompt_kind=box"].split()[1:] == ["0.750", "/", "0.650", "—", "1.000", "/", "0.250"]
    # the columns line up
    assert len({line.index("/") for line in lines[2:]}) == 1


def test_no_groups_no_table(capsys):
    assert format_group_table({"test/F1": 0.5, "test/IoU": 0.4}, "test", "land_cover") == ""
    print_group_table({"test/F1": 0.5}, ["land_cover"])
    assert capsys.readouterr().out == ""


def test_the_cli_prints_the_test_table(capsys):
    print_group_table(METRICS, TASKS)
    out = capsys.readouterr().out
    assert out.startswith("test scores per group") and "modality=sar" in out and "0.125 / 0.000" in out

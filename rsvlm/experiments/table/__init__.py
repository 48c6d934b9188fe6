"""``rsvlm table``: turn a sweep's run metrics into the table a paper prints.

Reads ``sweep.json`` (written by ``rsvlm sweep``) and each run's ``metrics.json``, groups the
runs by the row axes and averages over the seeds axis. A cell is ``mean ± std`` (sample
standard deviation, ``ddof=1``) when several seeds finished, the plain mean for one.

Metrics are stored as fractions in [0, 1] (torchmetrics' convention) and shown as percentages
with two decimals, as the SPEX paper prints them (``--no-percent`` shows the stored values
with four decimals). A column name ``F1`` is looked up in ``metrics.json`` as ``F1``, then
``test/F1``, then case-insensitively on the part after the last ``/``.

Runs are never dropped: a row whose runs all failed shows ``failed`` in its metric cells, one
with no finished run yet shows ``pending``; a row with some seeds missing shows the mean over
the finished ones, the ``runs`` column says how many (``2/3``) and ``status`` why. Extra
columns give the mean runtime, the mean peak memory and the parameter counts.

Column groups (``--groups AXIS`` or the sweep's ``table: {groups: AXIS}``): one set of metric
columns per label of that axis, e.g. one per dataset of a per-subset sweep (the SPEX paper's
Tables II–VI side by side: one row per method, one column group per dataset). ``--baseline``
adds the ``Index + Otsu`` row, scored on the same test images and averaged the same way
(:mod:`~rsvlm.experiments.table.baseline`).

Outputs: Markdown (always printed; ``PREFIX.md``), CSV (``PREFIX.csv``, numbers unrounded),
LaTeX (``PREFIX.tex``, a booktabs ``tabular``), and with ``--plot x=AXIS,y=METRIC`` a PNG line
plot of the metric against the axis with std error bars, one line per combination of the
other row axes (``PREFIX_<y>_vs_<x>.png``).

- :mod:`~rsvlm.experiments.table.results`: reading the runs of a sweep folder;
- :mod:`~rsvlm.experiments.table.stats`: grouping and mean ± std over seeds;
- :mod:`~rsvlm.experiments.table.formats`: Markdown, CSV and LaTeX;
- :mod:`~rsvlm.experiments.table.plotting`: the PNG plot;
- :mod:`~rsvlm.experiments.table.baseline`: the index baseline row;
- :mod:`~rsvlm.experiments.table.cli`: the ``rsvlm table`` entry point.
"""

from rsvlm.experiments.table.cli import build_parser, table_main
from rsvlm.experiments.table.formats import caption, latex_escape, to_csv, to_latex, to_markdown
from rsvlm.experiments.table.plotting import plot
from rsvlm.experiments.table.results import RunResult, TableError, collect, load_manifest, resolve_sweep_dir
from rsvlm.experiments.table.stats import DEFAULT_METRICS, Cell, Table, TableRow, aggregate, metric_key

__all__ = [
    "DEFAULT_METRICS",
    "Cell",
    "RunResult",
    "Table",
    "TableError",
    "TableRow",
    "aggregate",
    "build_parser",
    "caption",
    "collect",
    "latex_escape",
    "load_manifest",
    "metric_key",
    "plot",
    "resolve_sweep_dir",
    "table_main",
    "to_csv",
    "to_latex",
    "to_markdown",
]

"""``python -m rsvlm.experiments.table SWEEP_DIR``: the same as ``rsvlm table``."""

import sys

from rsvlm.experiments.table.cli import table_main

sys.exit(table_main(sys.argv[1:]))

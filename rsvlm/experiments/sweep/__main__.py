"""``python -m rsvlm.experiments.sweep SWEEP.yaml``: the same as ``rsvlm sweep``."""

import sys

from rsvlm.experiments.sweep.cli import sweep_main

sys.exit(sweep_main(sys.argv[1:]))

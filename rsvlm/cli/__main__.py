"""``python -m rsvlm.cli`` (what torchrun and sweeps launch)."""

import sys

from rsvlm.cli.main import main

sys.exit(main())

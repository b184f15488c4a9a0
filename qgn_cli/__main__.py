"""`python -m qgn_cli ...` = `qgn ...` (torchrun: `torchrun --nproc_per_node N -m qgn_cli train ...`)."""

import sys

from qgn_cli import main

sys.exit(main())

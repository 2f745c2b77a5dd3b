"""Entry point: ``python -m benchmarks.gpu_check``."""

import sys

from benchmarks.gpu_check.orchestrate import main

sys.exit(main())

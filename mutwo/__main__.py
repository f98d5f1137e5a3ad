"""``python -m mutwo SCENARIO.yaml`` is ``python -m mutwo.compare SCENARIO.yaml``."""

import sys

from mutwo.compare import main

sys.exit(main())

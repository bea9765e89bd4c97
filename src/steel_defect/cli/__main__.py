"""``python -m steel_defect.cli``: the same as ``steel-defect``."""

import sys

from steel_defect.cli import main

sys.exit(main())

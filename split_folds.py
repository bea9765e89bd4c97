"""Thin wrapper: `python split_folds.py --config CFG [...]` is `steel-defect split --config CFG [...]`."""

import sys

from steel_defect.cli import main

if __name__ == "__main__":
    sys.exit(main(["split", *sys.argv[1:]]))

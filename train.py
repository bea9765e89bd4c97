"""Thin wrapper: `python train.py --config CFG [...]` is `steel-defect train --config CFG [...]`."""

import sys

from steel_defect.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

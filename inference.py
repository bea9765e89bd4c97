"""Thin wrapper: `python inference.py --config CFG [...]` is `steel-defect predict --config CFG [...]`."""

import sys

from steel_defect.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))

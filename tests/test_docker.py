"""The Dockerfile's command is one the CLI accepts, and the build context leaves local state out.

No Docker engine runs here, so the image itself is not built in CI; `make lint` runs hadolint.
"""

from __future__ import annotations

import json
import re

from steel_defect.cli import build_parser
from tests.conftest import REPO


def _instruction(name: str) -> str:
    lines = (REPO / "Dockerfile").read_text().splitlines()
    matches = [line for line in lines if line.startswith(f"{name} ")]
    assert matches, f"Dockerfile has no {name}"
    return matches[-1][len(name) + 1 :]


def test_default_command_serves_the_gui_on_all_interfaces():
    command = json.loads(_instruction("CMD"))
    assert command[:2] == ["steel-defect", "serve"]
    args = build_parser().parse_args(command[1:])
    assert (args.host, args.port) == ("0.0.0.0", 8000)
    assert _instruction("EXPOSE") == "8000"


def test_copied_paths_exist_and_local_state_stays_out():
    copies = re.findall(r"^COPY (.+)$", (REPO / "Dockerfile").read_text(), re.M)
    sources = [source for line in copies for source in line.split()[:-1]]
    assert "src" in sources and "setup.py" in sources
    for source in sources:
        assert (REPO / source).exists(), source
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", "work", "data", ".git", "*.pth"} <= ignored
    assert "libturbojpeg0" in (REPO / "Dockerfile").read_text()

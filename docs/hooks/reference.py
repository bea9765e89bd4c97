"""MkDocs hook: the config reference, generated at build time from the code, so it cannot drift.

``docs/reference/config.md`` holds the marker ``<!-- config-reference -->``; this hook replaces it
with every key of ``config/defaults.py`` (default and meaning, from ``schema_table``) and every
registry's names with the first line of each component's docstring. A key without documentation
fails the build (``mkdocs build --strict`` in ``make test``).
"""

from __future__ import annotations

import inspect

MARKER = "<!-- config-reference -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ").replace("|", "\\|").strip()


def _registries() -> list[tuple[str, str, dict]]:
    from steel_defect.data.loaders import SAMPLERS
    from steel_defect.data.transforms import TRANSFORMS
    from steel_defect.losses import LOSSES
    from steel_defect.models.build import ARCHITECTURES
    from steel_defect.training.optim import OPTIMIZERS, SCHEDULERS

    return [
        ("model.name", "architectures (`models/build.py`)", ARCHITECTURES),
        (
            "loss.name",
            "losses (`losses/__init__.py`); `combo` and `scheduled` take other losses by name",
            LOSSES,
        ),
        ("optimizer.name", "optimizers (`training/optim.py`)", OPTIMIZERS),
        ("scheduler.name", "schedulers (`training/optim.py`)", SCHEDULERS),
        ("data.sampler", "samplers (`data/loaders.py`)", SAMPLERS),
        ("transforms.train / valid", "transforms (`data/transforms.py`); `OneOf` nests others", TRANSFORMS),
    ]


def reference() -> str:
    from steel_defect.config.loader import schema_table

    rows = schema_table()
    undocumented = [key for key, _, doc in rows if not doc.strip()]
    if undocumented:
        raise ValueError(f"config keys without documentation in config/defaults.py: {undocumented}")
    out = ["## Every key", "", "| key | default | meaning |", "|---|---|---|"]
    out += [f"| `{key}` | `{default}` | {_cell(doc)} |" for key, default, doc in rows]
    for key, what, registry in _registries():
        out += ["", f"## `{key}`: {what}", "", "| name | what it is |", "|---|---|"]
        for name in sorted(registry):
            entry = registry[name]
            out.append(
                f"| `{name}` | {_first_line(entry) if inspect.isclass(entry) or callable(entry) else ''} |"
            )
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, reference())
    return markdown

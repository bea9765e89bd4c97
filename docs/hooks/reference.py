"""MkDocs hook: the config reference, generated at build time from the code, so it cannot drift.

``docs/reference/config.md`` holds the marker ``<!-- config-reference -->``; this hook replaces it
with :func:`steel_defect.cli.reference.reference`: every key of ``config/defaults.py`` (default
and meaning) and every registry's names, the same text ``steel-defect config --docs`` prints. A
key without documentation fails the build (``mkdocs build --strict`` in ``make test``).
"""

from __future__ import annotations

MARKER = "<!-- config-reference -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        from steel_defect.cli.reference import reference

        return markdown.replace(MARKER, reference())
    return markdown

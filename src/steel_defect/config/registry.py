"""Looking a component up by name, and checking its ``params``: one helper for every registry.

Each concern keeps its own plain registry dict (``TRANSFORMS``, ``ARCHITECTURES``, ``LOSSES``,
``OPTIMIZERS``, ``SCHEDULERS``, ``SAMPLERS``); :func:`lookup` and :func:`check_params` are how
any of them is read, so an unknown name or parameter always raises :class:`ComponentError`
with the key path, a "did you mean" hint and the valid choices::

    config key 'loss.name': unknown loss 'bce_dise' (did you mean 'bce_dice'?); valid: bce, ...

:mod:`steel_defect.config.components` runs them over a whole config when it loads.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from steel_defect.config.errors import ComponentError, did_you_mean

__all__ = ["ComponentError", "accepted_params", "check_params", "did_you_mean", "lookup"]


def lookup(kind: str, name: Any, table: Mapping[str, Any], key_path: str) -> Any:
    """``table[name]``; an unknown ``name`` is a :class:`ComponentError` naming ``key_path``."""
    if isinstance(name, str) and name in table:
        return table[name]
    what = f"no {kind} named" if name is None else f"unknown {kind} {name!r}"
    raise ComponentError(key_path, f"{what}{did_you_mean(name, table)}; valid: {', '.join(table)}")


def accepted_params(
    target: Callable | Iterable[str], skip: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """``(accepted, required)`` keyword names of a constructor or function, or of a list of names.

    ``*args`` / ``**kwargs`` and the names in ``skip`` (those the caller passes itself) are left out.
    """
    skip = {"self", *skip}
    if not callable(target):
        names = [n for n in target if n not in skip]
        return names, []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = [
        p for p in inspect.signature(target).parameters.values() if p.kind in kinds and p.name not in skip
    ]
    return [p.name for p in params], [p.name for p in params if p.default is p.empty]


def check_params(
    target: Callable | Iterable[str],
    params: Any,
    key_path: str,
    *,
    skip: Iterable[str] = (),
    forbidden: Mapping[str, str] | None = None,
    open_kwargs: bool = False,
    hint: str = "",
) -> dict:
    """``params`` as a dict, after checking each key against what ``target`` accepts.

    ``key_path`` locates ``params`` (``loss.params``); ``forbidden`` maps accepted names this
    project refuses to the reason; ``open_kwargs``: unknown names pass (``**kwargs`` that reach
    something real); ``hint`` follows the message of an unknown name. Missing required
    parameters are errors too.
    """
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ComponentError(key_path, f"must be a mapping of arguments, got {params!r}")
    forbidden = forbidden or {}
    accepted, required = accepted_params(target, skip)
    valid = [name for name in accepted if name not in forbidden]
    for key in params:
        if not isinstance(key, str):
            raise ComponentError(key_path, f"parameter names must be strings, got {key!r}")
        if key in forbidden:
            raise ComponentError(f"{key_path}.{key}", f"cannot be set: {forbidden[key]}")
        if key not in valid and not open_kwargs:
            raise ComponentError(
                f"{key_path}.{key}",
                f"not a parameter{did_you_mean(key, valid)}{hint}; valid: {', '.join(valid) or '(none)'}",
            )
    missing = [name for name in required if name not in params and name not in forbidden]
    if missing:
        raise ComponentError(key_path, f"needs {', '.join(missing)}")
    return dict(params)

"""Load, merge, validate and save run configurations.

``load_config("configs/seg/unet_resnet18_bcedice.yml", ["train.epochs=2"])`` reads the
experiment file, follows its ``base:`` chain (paths relative to the file), merges it onto
the defaults of :mod:`steel_defect.config.defaults`, applies ``key.sub=value`` overrides,
fills derived paths, validates every key and returns an :class:`easydict.EasyDict`.
Errors raise :class:`ConfigError` with the key path, the file and the valid choices.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from easydict import EasyDict

from steel_defect.atomic import atomic_write
from steel_defect.config.defaults import SCHEMA, Opt
from steel_defect.config.errors import ConfigError, did_you_mean
from steel_defect.config.layout import folds_csv
from steel_defect.config.registry import check_params, lookup
from steel_defect.constants import CLASS_IDS, TTA_VIEWS

# No setting nests deeper than a few levels (transforms: list -> mapping -> params); a value
# nested hundreds deep is a typo or an attack, and would exhaust the recursion of the merge.
MAX_DEPTH = 16


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 does: ``lr: 3e-3`` is 0.003, not the
    string '3e-3' (YAML 1.1 wants a dot in the mantissa)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _parse_yaml(text: str, where: str):
    """YAML (floats as in YAML 1.2) whose every failure is a :class:`ConfigError` naming ``where``."""
    try:
        value = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({err})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return value


def _defaults(schema: dict) -> dict:
    return {
        key: _defaults(node) if isinstance(node, dict) else copy.deepcopy(node.default)
        for key, node in schema.items()
    }


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML file and, recursively, the ``base:`` it names (base first, file on top)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    if not path.is_file():
        where = f" (base of {seen[-1]})" if seen else ""
        raise ConfigError(f"config file {path} does not exist{where}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read as UTF-8 text ({err})") from None
    data = _parse_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _read_yaml(path.parent / base, (*seen, path))
    _merge(merged, data, SCHEMA, "", str(path))
    return merged


def _merge(target: dict, update: dict, schema: dict, prefix: str, source: str) -> None:
    """Merge ``update`` into ``target`` in place, checking keys against ``schema``.

    A component's ``params`` belong to the ``name`` they were written for: when a later file
    or override names another component (``loss.name=combo``), the earlier params are dropped
    instead of being passed to a constructor that does not take them.
    """
    if "name" in update and "params" in schema and update["name"] != target.get("name"):
        target["params"] = {}
    for key, value in update.items():
        key_path = f"{prefix}{key}"
        if key not in schema:
            valid = sorted(schema)
            hint = did_you_mean(key, valid, prefix)
            raise ConfigError(
                f"unknown config key '{key_path}' in {source}{hint};"
                + f" valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(valid)}"
            )
        node = schema[key]
        if isinstance(node, dict):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"config key '{key_path}' in {source} must be a mapping with keys "
                    f"{', '.join(sorted(node))}; got {value!r}"
                )
            _merge(target.setdefault(key, {}), value, node, f"{key_path}.", source)
        elif node.type is dict and isinstance(value, dict) and isinstance(target.get(key), dict):
            # params of a component: a later file or override adds to, or changes, single entries
            target[key] = {**target[key], **copy.deepcopy(value)}
        else:
            target[key] = copy.deepcopy(value)


def _check_type(key_path: str, opt: Opt, value: Any) -> None:
    if value is None:
        if not opt.nullable:
            raise ConfigError(f"config key '{key_path}' must not be null ({opt.doc})")
        return
    types = opt.type if isinstance(opt.type, tuple) else (opt.type,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        names = " or ".join(t.__name__ for t in types)
        raise ConfigError(
            f"config key '{key_path}' must be {names}, got {type(value).__name__} {value!r} ({opt.doc})"
        )
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(
            f"config key '{key_path}' is {value!r}{did_you_mean(value, opt.choices)}; "
            f"valid choices: {', '.join(map(repr, opt.choices))}"
        )


def _validate(cfg: dict, schema: dict, prefix: str = "") -> None:
    for key, node in schema.items():
        key_path = f"{prefix}{key}"
        if isinstance(node, dict):
            _validate(cfg[key], node, f"{key_path}.")
        else:
            _check_type(key_path, node, cfg[key])
            if node.type is float and isinstance(cfg[key], int):
                cfg[key] = float(cfg[key])


_EXTRA_KEYS = {"train_csv", "train_images", "weight"}


def _check_extra(entries: list) -> list[dict]:
    """``data.extra`` entries with their weight filled in; errors name the entry and key."""
    checked = []
    for k, entry in enumerate(entries):
        where = f"config key data.extra[{k}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping {{train_csv, train_images, weight}}, got {entry!r}")
        check_params(sorted(_EXTRA_KEYS), entry, f"data.extra[{k}]")
        for key in ("train_csv", "train_images"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ConfigError(f"{where}.{key} must be a path (string), got {entry.get(key)!r}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ConfigError(f"{where}.weight must be a number >= 0, got {weight!r}")
        checked.append({**entry, "weight": float(weight)})
    return checked


def model_classes(cfg: Any) -> tuple[int, ...]:
    """The class ids a segmenter predicts, in output order (checkpoints older than the key: all)."""
    return tuple(cfg["model"].get("classes") or CLASS_IDS)


CLS_HEAD_DEFAULTS = {"weight": 0.5, "dropout": 0.2, "gate": "hard"}


def model_cls_head(cfg: Any) -> dict | None:
    """A segmenter's classification head settings, or None (also for checkpoints older than the key)."""
    head = cfg["model"].get("cls_head")
    return {**CLS_HEAD_DEFAULTS, **head} if head else None


def _check_cls_head(cfg: dict) -> dict | None:
    head = cfg["model"]["cls_head"]
    if head is None:
        return None
    if cfg["task"] != "seg":
        raise ConfigError(
            "config key 'model.cls_head' is for segmenters (task: seg); a classifier is its own head"
        )
    head = {**CLS_HEAD_DEFAULTS, **check_params(list(CLS_HEAD_DEFAULTS), head, "model.cls_head")}
    weight, dropout = head["weight"], head["dropout"]
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        raise ConfigError(f"config key 'model.cls_head.weight' must be a number >= 0, got {weight!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ConfigError(f"config key 'model.cls_head.dropout' must be in [0, 1), got {dropout!r}")
    if head["gate"] not in ("hard", "soft"):
        raise ConfigError(
            f"config key 'model.cls_head.gate' is {head['gate']!r}; valid choices: 'hard', 'soft'"
        )
    return head


SEMI_METHODS = ("mean_teacher", "fixmatch")
SEMI_COMMON = {"weight": 1.0, "rampup_epochs": 2, "batch_size": 4}
SEMI_DEFAULTS = {
    # consistency of probabilities with an EMA teacher, the student seeing a noisy view
    "mean_teacher": {**SEMI_COMMON, "ema": 0.99, "noise": 0.1},
    # weak-to-strong: the model's own confident pixels (ema 0: this step's weights) on the clean
    # view are hard targets for its prediction of a strong view (noise, brightness, contrast, cutout)
    "fixmatch": {**SEMI_COMMON, "ema": 0.0, "noise": 0.2, "threshold": 0.95, "cutout": 0.5},
}


def _check_semi(cfg: dict) -> dict | None:
    """``train.semi`` with its method's defaults filled in, checked; None when off."""
    semi = cfg["train"]["semi"]
    if semi is None:
        return None
    key = "train.semi"
    if cfg["task"] != "seg":
        raise ConfigError(f"config key '{key}' is for segmenters (task: seg)")
    name = semi.get("name") if isinstance(semi, dict) else None
    lookup("semi-supervised method", name, dict.fromkeys(SEMI_METHODS), f"{key}.name")
    defaults = SEMI_DEFAULTS[name]
    semi = {**defaults, **check_params(["name", "unlabelled", *defaults], semi, key)}
    folder = semi.get("unlabelled")
    if not folder or not Path(str(folder)).is_dir():
        raise ConfigError(
            f"config key '{key}.unlabelled' must name a folder of unlabelled frames, got {folder!r}"
        )
    checks = {
        "weight": lambda v: v >= 0,
        "ema": (lambda v: 0 < v < 1) if name == "mean_teacher" else (lambda v: 0 <= v < 1),
        "rampup_epochs": lambda v: v >= 0 and float(v).is_integer(),
        "batch_size": lambda v: v >= 1 and float(v).is_integer(),
        "noise": lambda v: v >= 0,
        "threshold": lambda v: 0.5 <= v < 1,
        "cutout": lambda v: 0 <= v <= 1,
    }
    for field in defaults:
        value, ok = semi[field], checks[field]
        if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
            raise ConfigError(f"config key '{key}.{field}' is {value!r}; see `steel-defect config --docs`")
    return semi


# The student's model keys; classes and cls_head are the student's by construction (all four maps,
# no head: the teacher's maps are what it learns).
DISTILL_MODEL_KEYS = ("name", "encoder", "encoder_weights", "params", "output_prior")


def _check_distill(cfg: dict) -> None:
    """``distill.*``: keys and plain values (the student's component names are checked where the
    student is built, as every ``*.name`` is: distill/student.py::student_config)."""
    settings = cfg["distill"]
    model = settings["model"]
    for key, value in model.items():
        if key not in DISTILL_MODEL_KEYS:
            why = (
                "the student predicts all four classes and has no head"
                if key in ("classes", "cls_head")
                else f"valid keys: {', '.join(DISTILL_MODEL_KEYS)}"
            )
            raise ConfigError(
                f"unknown config key 'distill.model.{key}'{did_you_mean(key, DISTILL_MODEL_KEYS)}; {why}"
            )
        _check_type(f"distill.model.{key}", SCHEMA["model"][key], value)
    transforms = settings["transforms"]
    if transforms is not None:
        for key, value in transforms.items():
            if key not in ("train", "valid"):
                raise ConfigError(f"unknown config key 'distill.transforms.{key}'; valid keys: train, valid")
            if not isinstance(value, list):
                raise ConfigError(
                    f"config key 'distill.transforms.{key}' must be a list of transforms, got {value!r}"
                )
    if settings["epochs"] is not None and settings["epochs"] < 1:
        raise ConfigError(f"config key 'distill.epochs' must be at least 1, got {settings['epochs']}")
    if not 0.0 <= settings["label_weight"] <= 1.0:
        raise ConfigError(
            f"config key 'distill.label_weight' must be in [0, 1], got {settings['label_weight']}"
        )
    if settings["unlabelled_weight"] < 0:
        raise ConfigError(
            f"config key 'distill.unlabelled_weight' must be 0 or more, got {settings['unlabelled_weight']}"
        )
    folder = settings["unlabelled"]
    if folder is not None and not Path(folder).is_dir():
        raise ConfigError(
            f"config key 'distill.unlabelled' must name a folder of unlabelled frames, got {folder!r}"
        )
    unknown = [v for v in settings["tta"] if v not in TTA_VIEWS]
    if unknown:
        raise ConfigError(f"config key 'distill.tta' holds {unknown}; valid views: {', '.join(TTA_VIEWS)}")


def _check_classes(cfg: dict) -> None:
    classes, valid = cfg["model"]["classes"], list(CLASS_IDS)
    bad = any(c not in valid or isinstance(c, bool) for c in classes)
    if not classes or bad or classes != sorted(set(classes)):
        raise ConfigError(
            f"config key 'model.classes' must list class ids from {valid} in rising order without "
            f"repeats, got {classes!r}"
        )
    if cfg["task"] == "cls" and classes != valid:
        raise ConfigError(
            "config key 'model.classes' is for segmenters; the classifier always predicts all classes"
        )


def _check_averaging(cfg: dict) -> None:
    train = cfg["train"]
    if train["swa"] is not None and not 2 <= train["swa"] <= train["save_top_k"]:
        raise ConfigError(
            f"config key 'train.swa' averages the top-k saved checkpoints: it needs 2 <= swa <= "
            f"train.save_top_k ({train['save_top_k']}), got {train['swa']}; raise save_top_k or set swa: null"
        )
    if train["snapshots"] and cfg["scheduler"]["name"] != "cosine_restarts":
        raise ConfigError(
            "config key 'train.snapshots' keeps one checkpoint per learning-rate cycle: set "
            "scheduler.name: cosine_restarts with params {cycles: K}"
        )


def _check_gate(cfg: dict) -> None:
    inference = cfg["inference"]
    if inference["gate_scale"] is not None and inference["gate_scale"] < 2:
        raise ConfigError(
            f"config key 'inference.gate_scale' is the clean-frame gate's shrink factor per side: at "
            f"least 2 (2: a quarter of the pixels), or null for no gate; got {inference['gate_scale']}"
        )
    if inference["gate_max_lost_pairs"] < 0:
        raise ConfigError(
            "config key 'inference.gate_max_lost_pairs' must be 0 or more (pairs of out-of-fold Dice "
            f"the clean-frame gate may give up), got {inference['gate_max_lost_pairs']}"
        )


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["train.epochs=2", "paths.work_dir=work/x"]`` -> nested dict (values parsed as YAML)."""
    result: dict = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        shown = repr(item if len(item) <= 80 else item[:60] + "...")
        if not sep or not key.strip():
            raise ConfigError(f"override {shown} is not of the form key.sub=value")
        value = _parse_yaml(raw, f"override {shown}") if raw.strip() else None
        node = result
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {shown} conflicts with an earlier override of '{part}'")
        node[leaf] = value
    return result


def _fill_paths(paths: dict) -> None:
    data_dir = Path(paths["data_dir"])
    if paths["train_csv"] is None:
        paths["train_csv"] = str(data_dir / "train.csv")
    if paths["train_images"] is None:
        paths["train_images"] = str(data_dir / "train_images")
    if paths["test_images"] is None:
        paths["test_images"] = str(data_dir / "test_images")
    if paths["folds_csv"] is None:
        paths["folds_csv"] = str(folds_csv(paths["work_dir"]))


def check_inputs(cfg: dict, keys: tuple[str, ...]) -> None:
    """Fail unless each ``paths.<key>`` in ``keys`` exists on disk (null entries are skipped)."""
    for key in keys:
        name = key.removeprefix("paths.")
        opt = SCHEMA["paths"].get(name)
        if opt is None:
            raise KeyError(f"'{key}' is not a path key; valid: {', '.join(sorted(SCHEMA['paths']))}")
        value = cfg["paths"][name]
        if value is not None and not Path(value).exists():
            raise ConfigError(
                f"config key 'paths.{name}' points to {value}, which does not exist ({opt.doc}); "
                f"set it in the YAML or with --opts paths.{name}=..."
            )


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    require: tuple[str, ...] = (),
) -> EasyDict:
    """Resolved configuration: defaults <- base chain <- ``path`` <- ``overrides``.

    ``require`` names path keys (``"paths.train_csv"``) that must exist for the caller. Every
    key, type and plain setting is checked here; the component names (``loss.name``, the
    transforms, ...) are checked against their registries where the config is consumed, by
    :func:`steel_defect.training.checks.check_components`, which ``train`` calls first.
    """
    cfg = _defaults(SCHEMA)
    if path is not None:
        _merge(cfg, _read_yaml(Path(path)), SCHEMA, "", str(path))
    _merge(cfg, parse_overrides(overrides), SCHEMA, "", "--opts")
    _validate(cfg, SCHEMA)
    cfg["data"]["extra"] = _check_extra(cfg["data"]["extra"])
    _check_classes(cfg)
    _check_averaging(cfg)
    cfg["model"]["cls_head"] = _check_cls_head(cfg)
    cfg["train"]["semi"] = _check_semi(cfg)
    _check_distill(cfg)
    _check_gate(cfg)
    _fill_paths(cfg["paths"])
    check_inputs(cfg, require)
    return EasyDict(cfg)


def to_plain(cfg: Any) -> Any:
    """EasyDict (or nested dicts/lists) -> plain Python containers, safe for YAML and pickling."""
    if isinstance(cfg, dict):
        return {key: to_plain(value) for key, value in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_plain(value) for value in cfg]
    return cfg


def save_config(cfg: dict, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically; returns the path."""
    path = Path(path)
    with atomic_write(path) as handle:
        yaml.safe_dump(to_plain(cfg), handle, sort_keys=False)
    return path


def schema_table(schema: dict = SCHEMA, prefix: str = "") -> list[tuple[str, str, str]]:
    """Rows ``(key path, default, doc)`` for documentation."""
    rows = []
    for key, node in schema.items():
        if isinstance(node, dict):
            rows.extend(schema_table(node, f"{prefix}{key}."))
        else:
            default = node.default if not isinstance(node.default, list) else "(list)"
            choices = f" Choices: {', '.join(map(str, node.choices))}." if node.choices else ""
            rows.append(
                (f"{prefix}{key}", repr(default) if default is not None else "null", node.doc + choices)
            )
    return rows

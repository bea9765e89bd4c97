"""Configuration: documented defaults, YAML loading with a base chain, validation, saving."""

from steel_defect.config.loader import (
    ConfigError,
    check_inputs,
    load_config,
    model_classes,
    model_cls_head,
    save_config,
    to_plain,
)

__all__ = [
    "ConfigError",
    "check_inputs",
    "load_config",
    "model_classes",
    "model_cls_head",
    "save_config",
    "to_plain",
]

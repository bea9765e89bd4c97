"""Configuration: documented defaults, YAML loading with a base chain, validation, saving."""

from steel_defect.config.loader import (
    ConfigError,
    check_inputs,
    load_config,
    model_classes,
    save_config,
    to_plain,
)

__all__ = ["ConfigError", "check_inputs", "load_config", "model_classes", "save_config", "to_plain"]

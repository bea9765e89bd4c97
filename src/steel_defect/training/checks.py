"""Every named component of a config, checked against its registry where the config is consumed.

:func:`steel_defect.training.runner.train` calls :func:`check_components` first, and the demo
right after it loads its configs, so a typo in any ``*.name`` or its ``params`` fails with a
:class:`~steel_defect.config.errors.ComponentError` before ``config.yml``, folds or data are
written. :func:`steel_defect.config.load_config` checks the schema and plain settings only: the
registries live in the layers above ``config/`` (and importing them loads the training stack),
so the loader cannot reach them without an import pointing up the pipeline.

==========================  ============================================
``transforms.train/valid``  :data:`steel_defect.data.transforms.TRANSFORMS` (built)
``model.*``                 :data:`steel_defect.models.build.ARCHITECTURES`, smp / timm encoders
``loss``                    :data:`steel_defect.losses.LOSSES` (built)
``optimizer``               :data:`steel_defect.training.optim.OPTIMIZERS`
``scheduler``               :data:`steel_defect.training.optim.SCHEDULERS`
``data.sampler``            :data:`steel_defect.data.loaders.SAMPLERS`
``model.cls_head``          checked by the loader itself (plain settings)
==========================  ============================================
"""

from __future__ import annotations

from typing import Any

from steel_defect.data.loaders import check_sampler
from steel_defect.data.transforms import build_transforms
from steel_defect.losses import build_loss
from steel_defect.models.build import check_model
from steel_defect.training.optim import check_optimizer, check_scheduler


def check_components(cfg: Any) -> None:
    """Raise :class:`ComponentError` for the first name or parameter of ``cfg`` no registry accepts."""
    for split in ("train", "valid"):
        build_transforms(cfg.transforms[split], f"transforms.{split}")
    check_model(cfg)
    build_loss(cfg.loss.name, cfg.loss.params)
    check_optimizer(cfg)
    check_scheduler(cfg)
    check_sampler(cfg)

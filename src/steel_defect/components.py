"""Every named component of a config, checked against its registry when the config loads.

:func:`steel_defect.config.load_config` calls :func:`check_components` last (unless a caller
that never builds these parts asks it not to, to stay light), so a typo in any ``*.name`` or
its ``params`` fails with a :class:`~steel_defect.config.errors.ComponentError` before
``config.yml``, folds or data are written:

==========================  ============================================
``transforms.train/valid``  :data:`steel_defect.data.transforms.TRANSFORMS` (built)
``model.*``                 :data:`steel_defect.models.build.ARCHITECTURES`, smp / timm encoders
``loss``                    :data:`steel_defect.losses.LOSSES` (built)
``optimizer``               :data:`steel_defect.training.optim.OPTIMIZERS`
``scheduler``               :data:`steel_defect.training.optim.SCHEDULERS`
``data.sampler``            :data:`steel_defect.data.loaders.SAMPLERS`
``model.cls_head``          checked by the loader itself (plain settings)
==========================  ============================================

It lives above the concerns (it imports each registry) so that ``config/`` imports none of them.
"""

from __future__ import annotations

from typing import Any


def check_components(cfg: Any) -> None:
    """Raise :class:`ComponentError` for the first name or parameter of ``cfg`` no registry accepts."""
    from steel_defect.data.loaders import check_sampler
    from steel_defect.data.transforms import build_transforms
    from steel_defect.losses import build_loss
    from steel_defect.models.build import check_model
    from steel_defect.training.optim import check_optimizer, check_scheduler

    for split in ("train", "valid"):
        build_transforms(cfg.transforms[split], f"transforms.{split}")
    check_model(cfg)
    build_loss(cfg.loss.name, cfg.loss.params)
    check_optimizer(cfg)
    check_scheduler(cfg)
    check_sampler(cfg)

"""Every named component is checked before training writes anything: one error type, the key path, a hint.

Each case runs ``steel-defect train`` with one typo and checks that it fails with exit status 2
and one line naming the key, before the work directory (``config.yml``, logs, checkpoints) exists.
"""

import subprocess
import sys

import pytest

from steel_defect.cli import main
from steel_defect.config import ConfigError, load_config
from steel_defect.config.errors import ComponentError
from steel_defect.training.checks import check_components
from steel_defect.training.runner import train
from tests.conftest import REPO

CASES = {
    "transform": (
        ["transforms.train=[{name: HorizontalFlop}]"],
        "'transforms.train[0].name': unknown transform 'HorizontalFlop' (did you mean 'HorizontalFlip'?)",
    ),
    "transform params": (
        ["transforms.train=[{name: HorizontalFlip, params: {pp: 0.5}}]"],
        "'transforms.train[0].params.pp': not a parameter (did you mean 'p'?)",
    ),
    "model": (["model.name=unte"], "'model.name': unknown architecture 'unte' (did you mean 'unet'?)"),
    "encoder": (["model.encoder=resnet19"], "'model.encoder': unknown encoder 'resnet19' (did you mean"),
    "model params": (
        ["model.params={decoder_chanels: [8]}"],
        "'model.params.decoder_chanels': not a parameter (did you mean 'decoder_channels'?)",
    ),
    "loss": (["loss.name=bce_dise"], "'loss.name': unknown loss 'bce_dise' (did you mean 'bce_dice'?)"),
    "loss params": (
        ["loss.params={smoth: 1.0}"],
        "'loss.params.smoth': not a parameter (did you mean 'smooth'?)",
    ),
    "nested loss": (
        ["loss.name=combo", "loss.params={terms: [{name: bce}, {name: lovasz}]}"],
        "'loss.params.terms[1].name': unknown loss 'lovasz' (did you mean 'lovasz_hinge'?)",
    ),
    "optimizer": (
        ["optimizer.name=adamm"],
        "'optimizer.name': unknown optimizer 'adamm' (did you mean 'adam'?)",
    ),
    "optimizer params": (
        ["optimizer.params={weight_decai: 0.1}"],
        "'optimizer.params.weight_decai': not a parameter (did you mean 'weight_decay'?)",
    ),
    "scheduler": (
        ["scheduler.name=cosin"],
        "'scheduler.name': unknown scheduler 'cosin' (did you mean 'cosine'?)",
    ),
    "scheduler params": (
        ["scheduler.name=cosine", "scheduler.params={warmup: 1}"],
        "'scheduler.params.warmup': not a parameter (did you mean 'warmup_epochs'?)",
    ),
    "scheduler value": (
        ["train.epochs=4", "scheduler.name=cosine_restarts", "scheduler.params={cycles: 3}"],
        "'scheduler.params': cosine_restarts: cycles must divide train.epochs (4)",
    ),
    "sampler": (
        ["data.sampler=balance"],
        "'data.sampler': unknown sampler 'balance' (did you mean 'balanced'?)",
    ),
    "sampler params": (
        ["data.sampler=balanced", "data.sampler_params={defect_frac: 0.5}"],
        "'data.sampler_params.defect_frac': not a parameter (did you mean 'defect_fraction'?)",
    ),
    "cls head": (
        ["model.cls_head={wieght: 0.5}"],
        "'model.cls_head.wieght': not a parameter (did you mean 'weight'?)",
    ),
    "extra set": (
        ["data.extra=[{train_csv: a.csv, train_images: a, wieght: 2}]"],
        "'data.extra[0].wieght': not a parameter (did you mean 'weight'?)",
    ),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_a_typo_fails_at_load_before_any_file_is_written(kind, tiny_synth, tmp_path, capsys):
    opts, message = CASES[kind]
    work = tmp_path / "work"
    argv = ["train", "--config", str(REPO / "configs/base.yml"), "--opts"]
    argv += [f"paths.data_dir={tiny_synth / 'data'}", f"paths.folds_csv={tiny_synth / 'data/train.csv'}"]
    argv += [f"paths.work_dir={work}", *opts]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("steel-defect train: error: config key ") and message in err, err
    assert not work.exists()  # no config.yml, no fold folder, no logs


def test_one_error_type_for_every_kind():
    for opts, _ in CASES.values():
        with pytest.raises(ConfigError) as info:
            check_components(load_config(None, opts))
        kinds = (ComponentError, ConfigError)
        assert type(info.value) in kinds
    with pytest.raises(ComponentError):  # the loader's own component checks use the same type
        load_config(None, ["model.cls_head={wieght: 0.5}"])


def test_loading_a_config_stays_light_and_leaves_names_to_the_consumer():
    code = (
        "import sys; from steel_defect.config import load_config; "
        "cfg = load_config(None, ['loss.name=bce_dise']); "
        "print(cfg.loss.name, 'torch' in sys.modules, 'steel_defect.losses' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["bce_dise", "False", "False"]  # no registry, no torch: light commands
    with pytest.raises(ComponentError, match="did you mean 'bce_dice'"):
        train(load_config(None, ["loss.name=bce_dise"]))  # train() checks before it writes

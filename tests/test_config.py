"""Config loading: base chains, overrides, validation errors, saving."""

import pytest
import yaml

from steel_defect.config import ConfigError, load_config, save_config
from steel_defect.config.loader import parse_overrides
from tests.conftest import SHIPPED_CONFIGS, each_config


def _yaml(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_base_experiment_and_overrides_stack(tmp_path):
    _yaml(tmp_path / "base.yml", {"seed": 1, "data": {"batch_size": 16}, "model": {"params": {"a": 1}}})
    exp = _yaml(
        tmp_path / "seg" / "exp.yml",
        {"base": "../base.yml", "data": {"batch_size": 4}, "model": {"params": {"b": 2}}},
    )
    # made-up model params show the merge; the registries would reject them
    cfg = load_config(exp, ["seed=7", "optimizer.lr=0.5", "paths.work_dir=work/x"])
    assert cfg.seed == 7  # override beats base
    assert cfg.data.batch_size == 4  # experiment beats base
    assert cfg.data.channels == 3  # default survives
    assert cfg.model.params == {"a": 1, "b": 2}  # params merge entry by entry
    assert cfg.optimizer.lr == 0.5
    assert cfg.paths.folds_csv == "work/x/folds.csv"  # derived path follows work_dir
    assert cfg.paths.train_csv == "data/severstal/train.csv"


def test_naming_another_component_drops_the_params_of_the_old_one(tmp_path):
    exp = _yaml(tmp_path / "exp.yml", {"loss": {"name": "bce_dice", "params": {"per_image": False}}})
    terms = "{terms: [{name: bce, weight: 0.75}, {name: lovasz_hinge, weight: 0.25}]}"
    cfg = load_config(exp, ["loss.name=combo", f"loss.params={terms}"])
    assert cfg.loss.params == {
        "terms": [{"name": "bce", "weight": 0.75}, {"name": "lovasz_hinge", "weight": 0.25}]
    }
    assert load_config(exp, ["loss.name=bce"]).loss.params == {}
    # the same name keeps its params, and an override adds to them
    same = load_config(exp, ["loss.name=bce_dice", "loss.params={smooth: 2.0}"])
    assert same.loss.params == {"per_image": False, "smooth": 2.0}


def test_int_accepted_for_float_and_converted(tmp_path):
    cfg = load_config(None, ["optimizer.lr=1"])
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)


def test_floats_without_a_dot_read_as_floats_in_files_and_overrides(tmp_path):
    # YAML 1.1 (PyYAML's default) reads 3e-3 as the string '3e-3'; configs read it as 0.003
    path = tmp_path / "exp.yml"
    path.write_text("optimizer:\n  lr: 3e-3\n  params: {weight_decay: 1E-5}\n")
    cfg = load_config(path, ["optimizer.encoder_lr=2.5e-4"])
    opt = cfg.optimizer
    assert (opt.lr, opt.params.weight_decay, opt.encoder_lr) == (3e-3, 1e-5, 2.5e-4)
    parsed = parse_overrides(["a=1e3", "b=12", "c=v1e3", "d=1e"])
    assert parsed == {"a": 1000.0, "b": 12, "c": "v1e3", "d": "1e"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"data": {"batch_sze": 4}},
            r"unknown config key 'data\.batch_sze'.*did you mean 'data\.batch_size'",
        ),
        ({"modle": {}}, r"unknown config key 'modle'.*valid keys: .*model"),
        ({"data": {"batch_size": "four"}}, r"'data\.batch_size' must be int, got str"),
        ({"data": {"batch_size": True}}, r"'data\.batch_size' must be int, got bool"),
        ({"task": "detect"}, r"'task' is 'detect'; valid choices: 'cls', 'seg'"),
        ({"data": 3}, r"'data' .* must be a mapping"),
        ({"seed": None}, r"'seed' must not be null"),
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path, data, message):
    path = _yaml(tmp_path / "exp.yml", data)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_base_and_loops(tmp_path):
    path = _yaml(tmp_path / "exp.yml", {"base": "nope.yml"})
    with pytest.raises(ConfigError, match=r"nope\.yml does not exist \(base of"):
        load_config(path)
    _yaml(tmp_path / "a.yml", {"base": "b.yml"})
    _yaml(tmp_path / "b.yml", {"base": "a.yml"})
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yml")


def test_missing_input_path_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'paths\.train_csv' points to .*nowhere/train\.csv"):
        load_config(None, [f"paths.data_dir={tmp_path}/nowhere"], require=("paths.train_csv",))


def test_overrides_parse_yaml_values():
    assert parse_overrides(["a.b=3", "a.c=[1, 2]", "d=null", "e=text"]) == {
        "a": {"b": 3, "c": [1, 2]},
        "d": None,
        "e": "text",
    }
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        parse_overrides(["novalue"])


def test_deep_or_unreadable_yaml_is_a_config_error(tmp_path):
    # 2500 levels pass Python's recursion limit (even hypothesis's raised one) inside PyYAML
    deep = "[" * 2500 + "]" * 2500
    with pytest.raises(ConfigError, match=r"override 'train\.epochs=\[\[.*\.\.\.': nested deeper than 16"):
        load_config(None, [f"train.epochs={deep}"])
    (tmp_path / "deep.yml").write_text(f"model: {{params: {{a: {'[' * 20}{']' * 20}}}}}")
    with pytest.raises(ConfigError, match=r"deep\.yml: nested deeper than 16 levels"):
        load_config(tmp_path / "deep.yml")
    (tmp_path / "binary.yml").write_bytes(b"\xff\xfe model")
    with pytest.raises(ConfigError, match=r"binary\.yml: cannot read as UTF-8 text"):
        load_config(tmp_path / "binary.yml")


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(None, ["train.epochs=3"])
    path = save_config(cfg, tmp_path / "run" / "config.yml")
    again = load_config(path)
    assert again == cfg


@each_config(SHIPPED_CONFIGS)
def test_every_shipped_config_loads(path):
    assert load_config(path).task in ("cls", "seg")

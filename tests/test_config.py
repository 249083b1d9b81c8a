"""The config: typed, frozen, strict; --set overrides parsed as YAML and checked like the file."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from xnortrain.errors import ConfigError
from xnortrain.train.config import Config, build_config, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    config = load_config(path)
    assert config.train.out_dir == f"runs/{path.stem}"
    assert config.binop.enabled == (not path.stem.endswith("_float"))  # a float twin trains without BinOp


def test_cifar_nin_carries_the_ports_hyperparameters():
    c = load_config(Path(__file__).parent.parent / "configs" / "cifar_nin.yaml")
    assert (c.model.name, c.data.name, c.optim.name, c.optim.lr, c.optim.weight_decay) == ("nin", "cifar10", "adam", 0.01, 1e-5)
    assert (c.data.batch_size, c.schedule.milestones, c.schedule.gamma, c.train.epochs) == (128, [120, 200, 240, 280], 0.1, 320)


def test_overrides_are_parsed_as_yaml_and_typed(tmp_path):
    c = load_config(None, ["train.epochs=1", "optim.lr=0.001", "binop.include=[a.*, b]", "data.train_subset=null",
                           "train.grad_clip=2"])
    assert c.train.epochs == 1 and c.optim.lr == 0.001 and c.binop.include == ["a.*", "b"]
    assert c.data.train_subset is None and c.train.grad_clip == 2.0 and isinstance(c.train.grad_clip, float)


def test_an_exponent_without_a_decimal_point_is_a_number(tmp_path):
    """PyYAML alone reads 1e-5 as a string; the config reads it as YAML 1.2 does."""
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  weight_decay: 1e-5\n")
    assert load_config(path).optim.weight_decay == 1e-5
    c = load_config(None, ["optim.lr=3E-3", "train.grad_clip=1e1", "binop.include=[1e2x]"])
    assert (c.optim.lr, c.train.grad_clip, c.binop.include) == (3e-3, 10.0, ["1e2x"])


def test_quantizer_keys_accept_a_name_a_mapping_and_rules():
    rules = '[{match: "block2.*", quantizer: sign}, {match: "*", quantizer: codebook, values: [1, -1, 0.5, -0.5]}]'
    config = load_config(None, ["binop.quantizer=" + rules, "binop.params=[v]"])
    assert config.binop.quantizer[1] == {"match": "*", "quantizer": "codebook", "values": [1, -1, 0.5, -0.5]}
    assert config.binop.params == ["v"]
    assert load_config(None, ["binop.quantizer={name: xnor, scale: layer}"]).binop.quantizer == {"name": "xnor", "scale": "layer"}


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().train.epochs = 3


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"optim": {"lrr": 0.1}}, "unknown config key in optim: optim.lrr (valid: name, lr, weight_decay"),
        ({"optimizer": {}}, "unknown config section: optimizer (valid: model, data, binop, optim, schedule, train, distill)"),
        ({"train": {"epochs": "ten"}}, "train.epochs: expected an integer, got 'ten'"),
        ({"train": {"epochs": 2.5}}, "train.epochs: expected an integer, got 2.5"),
        ({"train": {"epochs": True}}, "train.epochs: expected an integer, got True"),
        ({"train": {"epochs": 0}}, "train.epochs: must be > 0, got 0"),
        ({"optim": {"name": "rmsprop"}}, "optim.name: 'rmsprop' is not one of adam, adamw, sgd"),
        ({"data": {"name": "svhn"}}, "data.name: 'svhn' is not one of cifar10, cifar100, mnist, fashion_mnist, imagenet, synthetic"),
        ({"binop": {"include": "conv*"}}, "binop.include: expected a list of a string, got 'conv*'"),
        ({"schedule": {"milestones": [10, "x"]}}, "schedule.milestones[1]: expected an integer, got 'x'"),
        ({"train": {"amp": "fp8"}}, "train.amp: 'fp8' is not one of none, bf16, fp16"),
        ({"binop": {"enabled": "yes please"}}, "binop.enabled: expected true or false, got 'yes please'"),
        ({"train": 3}, "config section 'train' must be a mapping of keys, got 3"),
        ({"binop": {"quantizer": 3}}, "binop.quantizer: expected a string or a mapping or a list, got 3"),
        ({"binop": {"quantizer": "ternary"}}, "binop.quantizer: unknown quantizer 'ternary': choose one of xnor, sign"),
        ({"binop": {"quantizer": [{"match": "*", "quantizer": "codebook", "value": [1]}]}},
         "binop.quantizer: quantizer codebook: unknown option(s) value; valid: values, scale"),
        ({"binop": {"quantizer": [{"quantizer": "sign"}]}}, "binop.quantizer: quantizer rule {'quantizer': 'sign'}: needs `match"),
        ({"binop": {"params": "v"}}, "binop.params: expected a list of a string, got 'v'"),
    ],
)
def test_bad_config_raises_one_line_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs", "--set 'train.epochs' must look like section.key=value"),
        ("epochs=3", "--set key 'epochs' must be section.key"),
        ("train.epochs=[1", "--set train.epochs: value '[1' is not valid YAML"),
        ("train.epochs=abc", "train.epochs: expected an integer, got 'abc'"),
        ("train.epoch=3", "unknown config key in train: train.epoch"),
    ],
)
def test_bad_override_raises(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML at line \d"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="must hold a mapping of sections"):
        load_config(listing)

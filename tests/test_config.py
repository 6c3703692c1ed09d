import pytest

from loopgolf.config import ConfigError, RunConfig
from loopgolf.presets import PRESETS, get_preset


def test_json_round_trip_of_every_preset():
    for name in PRESETS:
        cfg = get_preset(name)
        again = RunConfig.from_json(cfg.to_json())
        assert again == cfg


def test_dotted_overrides_are_typed():
    cfg = get_preset("baseline").override(["model.plan=3x4", "train.budget_s=300", "train.compile=false",
                                           "train.batch_tokens=524_288", "quant.codec=zstd"])
    assert cfg.model.plan == "3x4" and cfg.train.budget_s == 300.0 and cfg.train.compile is False
    assert cfg.train.batch_tokens == 524288 and cfg.quant.codec == "zstd"


@pytest.mark.parametrize("assignment,fragment", [
    ("model.nope=1", "unknown field 'nope'"),
    ("nosection.x=1", "no config section"),
    ("train.max_steps=abc", "expected int"),
    ("train.compile=maybe", "expected a boolean"),
    ("plan", "expected section.field=value"),
])
def test_bad_overrides_name_the_field(assignment, fragment):
    with pytest.raises(ConfigError, match=fragment):
        get_preset("baseline").override([assignment])


@pytest.mark.parametrize("assignment,fragment", [
    ("model.n_heads=7", "not divisible"),
    ("model.n_kv_heads=3", "not a multiple"),
    ("train.batch_tokens=1000", "not a multiple of data.seq_len"),
    ("quant.codec=gzip", "quant.codec"),
    ("optim.warmdown_frac=1.5", "fraction"),
])
def test_impossible_configs_are_refused(assignment, fragment):
    with pytest.raises(ConfigError, match=fragment):
        get_preset("baseline").override([assignment]).validate()


def test_unknown_field_in_json_is_refused():
    with pytest.raises(ConfigError, match="unknown config field"):
        RunConfig.from_dict({"model": {"dimm": 3}})

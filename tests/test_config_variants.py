"""The tricks' published-variant fields: ordinary model.* fields, defaults = the earlier behaviour."""
import pytest

from loopgolf.config import ConfigError, ModelConfig, RunConfig
from loopgolf.config_variants import TrickVariants


def test_fields_are_model_fields_with_round_trip_and_override():
    cfg = RunConfig().override(["model.bigram_hash=mul", "model.unet_max_pairs=5", "model.smear_after_norm=true"])
    assert isinstance(cfg.model, TrickVariants)
    assert (cfg.model.bigram_hash, cfg.model.unet_max_pairs, cfg.model.smear_after_norm) == ("mul", 5, True)
    back = RunConfig.from_json(cfg.to_json())
    assert back.model == cfg.model and back.model.ve_table_std == 0.02


@pytest.mark.parametrize("assign, needle", [
    ("bigram_hash='crc'", "model.bigram_hash"),
    ("bigram_scale=-1", "model.bigram_scale"),
    ("unet_max_pairs=-2", "model.unet_max_pairs"),
    ("ve_proj_gain=float('nan')", "model.ve_proj_gain"),
])
def test_bad_values_name_the_field(assign, needle):
    key, value = assign.split("=", 1)
    cfg = ModelConfig(**{key: eval(value)})
    with pytest.raises(ConfigError, match=needle):
        cfg.validate()


def test_defaults_validate():
    ModelConfig().validate()
    assert ModelConfig().value_embeds_std == 0.0 and ModelConfig().smear_init == -3.0

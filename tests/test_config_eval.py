"""EvalConfig: the scoring recipe's fields are checked with one message naming the field."""
import pytest

from loopgolf.config import ConfigError, EvalConfig, RunConfig


def test_defaults_are_plain_windows_of_the_training_length():
    e = EvalConfig()
    assert e.method == "plain" and e.context == 0
    e.validate(seq_len=1024)


@pytest.mark.parametrize("fields, message", [
    ({"method": "beam"}, "eval.method='beam': choose one of plain"),
    ({"method": "sliding", "stride": 0}, "eval.stride=0 must be in 1..1024"),
    ({"context": -1}, "eval.context=-1 must be >= 0"),
    ({"sgd_momentum": 1.0}, "eval.sgd_momentum=1.0 must be in [0, 1)"),
    ({"tilt_order": 1}, "eval.tilt_order=1 must be >= 2"),
    ({"lora_targets": "q,kv"}, "eval.lora_targets='q,kv': 'kv' is not one of all"),
    ({"lora_short_chunks": "256-8"}, "eval.lora_short_chunks='256-8': '256-8' is not 'max_doc_tokens:chunk'"),
    ({"lora_phase_prefix_docs": 2500}, "eval.lora_phase_prefix_docs=2500 needs eval.lora_phases >= 1"),
    ({"lora_phase_prefix_docs": -1, "lora_phases": 1}, "eval.lora_phase_prefix_docs=-1 must be >= 0"),
])
def test_bad_fields_name_themselves(fields, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        EvalConfig(**fields).validate(seq_len=1024)


def test_the_recipe_round_trips_through_the_run_config():
    cfg = RunConfig()
    cfg.override(["eval.method=sliding", "eval.stride=128"])
    back = RunConfig.from_json(cfg.to_json())
    assert back.eval == cfg.eval and back.eval.stride == 128

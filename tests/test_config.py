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
    ("train.grad_sync=nccl", "train.grad_sync=.nccl.: choose ddp or allreduce"),
    ("model.block=resnet", "model.block='resnet': choose baseline or plain_prenorm"),
    ("optim.kind=sgd", "optim.kind='sgd'"),
    ("optim.lr_schedule=step", "lr_schedule linear or cosine"),
])
def test_impossible_configs_are_refused(assignment, fragment):
    with pytest.raises(ConfigError, match=fragment):
        get_preset("baseline").override([assignment]).validate()


def test_unknown_field_in_json_is_refused():
    with pytest.raises(ConfigError, match="unknown config field"):
        RunConfig.from_dict({"model": {"dimm": 3}})


def test_every_preset_validates():
    for name in PRESETS:
        get_preset(name).validate()


@pytest.mark.parametrize("assignment,fragment", [
    ("model.dim=-5", "model.dim=-5 must be >= 1"),
    ("model.dim=0", "model.dim=0 must be >= 1"),
    ("model.n_heads=0", "model.n_heads=0 must be >= 1"),
    ("model.n_kv_heads=0", "model.n_kv_heads=0 must be >= 1"),
    ("model.rope_base=0", "model.rope_base=0.0 must be > 0"),
    ("model.logit_softcap=nan", "model.logit_softcap=nan must be a finite number"),
    ("train.batch_tokens=0", "train.batch_tokens=0 must be > 0"),
    ("train.batch_tokens=-256", "train.batch_tokens=-256 must be > 0"),
    ("train.micro_batch_seqs=0", "train.micro_batch_seqs must be >= 1"),
    ("train.budget_s=-1", "train.budget_s=-1.0 must be > 0"),
    ("train.budget_s=nan", "train.budget_s=nan must be a finite"),
    ("train.budget_s=inf", "train.budget_s=inf must be a finite"),
    ("train.log_every=0", "train.log_every=0 must be >= 1"),
    ("train.seed=-1", "train.seed=-1"),
    ("optim.matrix_lr=-1", "optim.matrix_lr=-1.0 must be >= 0"),
    ("optim.head_lr=inf", "optim.head_lr=inf must be a finite"),
    ("optim.asym_logit_lr=-1", "optim.asym_logit_lr=-1.0 must be >= 0"),
    ("optim.momentum=1", "optim.momentum=1.0 must be in [0, 1)"),
    ("optim.adam_eps=0", "optim.adam_eps=0.0 must be > 0"),
    ("optim.warmup_frac=nan", "optim.warmup_frac=nan"),
    ("quant.gptq_reserve_s=-1", "quant.gptq_reserve_s=-1.0 must be >= 0"),
    ("quant.gptq_calib_batches=0", "quant.gptq_calib_batches=0 must be >= 1"),
    ("eval.max_tokens=-5", "eval.max_tokens=-5 must be 0"),
    ("eval.max_tokens=10", "or >= data.seq_len=1024"),
])
def test_out_of_range_fields_say_what_is_wrong(assignment, fragment):
    with pytest.raises(ConfigError) as info:
        get_preset("baseline").override([assignment]).validate()
    assert fragment in str(info.value) and "divisible" not in str(info.value)


def test_cosine_schedule_refuses_a_second_decay():
    for extra in (["optim.warmdown_frac=0.3"], ["optim.warmdown_iters=100"],
                  ["optim.lr_warmup_steps=100", "optim.lr_cosine_steps=50"]):
        with pytest.raises(ConfigError, match="optim.lr_schedule=cosine"):
            get_preset("tiny").override(["optim.warmdown_frac=0", "optim.lr_schedule=cosine", *extra]).validate()


def test_asym_logit_without_a_softcap_is_refused():
    with pytest.raises(ConfigError, match="model.asym_logit.*model.logit_softcap=30"):
        get_preset("tiny").override(["model.asym_logit=true", "model.logit_softcap=0"]).validate()
    get_preset("tiny").override(["model.asym_logit=true", "model.fused_ce=true"]).validate()


def test_zero_budget_means_max_steps_bounds_the_run():
    cfg = get_preset("tiny")
    assert cfg.train.budget_s == 0.0 and cfg.validate().train.max_steps == 8

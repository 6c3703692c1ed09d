import ast
import inspect
import textwrap

import pytest
import torch

from loopgolf.config import ModelConfig
from loopgolf.model import gpt
from loopgolf.model.blocks import Block, PlainAttention, PlainBlock
from loopgolf.model.gpt import GPT
from loopgolf.model.recurrence import parse_plan
from loopgolf.model.stream import push_skip
from loopgolf.model.wiring import Context, Feature, ModelShape, wire


def _cfg(**kw):
    return ModelConfig(**{**dict(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48), **kw})


def test_shape_is_taken_over_every_stage():
    cfg = _cfg(plan="3x4", plan_stages="3x2@0.3;3x3@0.5", untie_repeat_mlp=True, ve_layers="-1")
    shape = ModelShape.of(cfg, [parse_plan(s) for s in ("3x2", "3x3", "3x4")])
    assert (shape.n_blocks, shape.n_slots, shape.n_skip_rows, shape.max_visits) == (3, 12, 6, 4)
    assert shape.repeat_keys == tuple((b, v) for b in range(3) for v in (1, 2, 3))
    assert shape.kv_dim == 16 and shape.ve_layers == (-1,)


def test_shape_check_names_what_does_not_fit():
    shape = ModelShape.of(_cfg(plan="2x2"), [parse_plan("2x2")])
    shape.check(parse_plan("2x2").with_loops(5))  # derived plans fit
    with pytest.raises(ValueError, match="parameter slot 5; the model has 4"):
        shape.check(parse_plan("2x3"))


def test_context_once_computes_a_table_once_per_forward():
    ctx, calls = Context(None, torch.zeros(1), torch.zeros(1)), []
    for _ in range(3):
        assert ctx.once("t", lambda: calls.append(1) or 7) == 7
    assert calls == [1]


class _Norm(Feature):
    def __init__(self, cfg=None, shape=None):
        pass

    def at(self, spec):
        return {"norm": torch.tanh}


def test_two_tricks_replacing_one_hook_is_an_error():
    blocks = torch.nn.ModuleList([Block(_cfg())])
    layers = wire(parse_plan("1x2"), blocks, [_Norm()], Block.default_ops)
    assert [layer.norm for layer in layers] == [torch.tanh, torch.tanh]
    assert layers[0].mlp is blocks[0].mlp and layers[0].pre == ()
    with pytest.raises(ValueError, match="both replace the 'norm'"):
        wire(parse_plan("1"), blocks, [_Norm(), _Norm()], Block.default_ops)


def test_a_layer_holds_only_the_ops_it_runs():
    model = GPT(_cfg(plan="4", xsa_last=1, ve_dim=8, ve_layers="1", loop_embed=True))
    layers = model._stage_layers[-1]
    assert [len(layer.attn_y) for layer in layers] == [0, 0, 0, 1]  # XSA on the last layer only
    assert [len(layer.v) for layer in layers] == [0, 1, 0, 0]  # V-injection on layer 1 only
    # U-Net: encoder layers push; decoder layers pop, then the loop embedding is added
    assert [len(layer.pre) for layer in layers] == [1, 1, 2, 2]
    assert [len(layer.post) for layer in layers] == [1, 1, 0, 0]


def test_forward_is_a_plain_loop_without_feature_branches():
    """The forward pass has no `if` and no conditional expression: tricks were decided in __init__."""
    for fn in (GPT._hidden, GPT._loss_of, GPT.forward, GPT.logits, Block.forward, PlainBlock.forward,
               PlainAttention.position):
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.If, ast.IfExp))], fn.__qualname__


def test_every_registered_trick_is_off_by_default():
    model = GPT(_cfg(plan="2"))
    assert model._features and all(type(f).__name__ == "UNetSkip" for f in model._features)
    assert {cls.__name__ for cls in gpt.TRICKS} >= {"BigramHash", "SmearGate", "XSA", "LoopLoRA",
                                                    "MTPHeads", "CrossRepeatSkip", "LNScale"}


def test_the_attention_kernel_is_a_single_hook_and_layers_of_sees_the_whole_plan():
    from loopgolf.model.blocks import plain_attend

    class _Attend(Feature):
        def at(self, spec):
            return {"attend": plain_attend}

    class _Last(Feature):
        def layers_of(self, plan):  # a whole-plan decision: an op on the final layer only
            return [{"post": push_skip} if s.v == plan.n_virtual - 1 else {} for s in plan.layers()]

    blocks = torch.nn.ModuleList(Block(_cfg()) for _ in range(3))
    assert all(layer.attend is plain_attend for layer in wire(parse_plan("3"), blocks, [], Block.default_ops))
    with pytest.raises(ValueError, match="both replace the 'attend'"):
        wire(parse_plan("1"), blocks, [_Attend(), _Attend()], Block.default_ops)
    layers = wire(parse_plan("3"), blocks, [_Last()], Block.default_ops)
    assert [len(layer.post) for layer in layers] == [0, 0, 1]

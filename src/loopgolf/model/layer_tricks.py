"""Tricks that change how a block runs at one virtual layer: they replace one of the layer's
single-valued hooks ("controls", "norm", "residual", "mlp"; model/wiring.py), whose defaults are the
baseline's (Block.default_ops in model/blocks.py).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from loopgolf.config import ModelConfig
from loopgolf.model.blocks import MLPS, mix_x0, rms_norm
from loopgolf.model.recurrence import LayerSpec
from loopgolf.model.wiring import Feature, ModelShape


class PerLayerScales(Feature):
    """Residual controls per virtual layer instead of per block (PR #927; model.per_layer_scales):
    a shared block's visits each get their own attn_scale, mlp_scale and resid_mix, used as

        x = mix[0] x + mix[1] x0;  x += attn_scale * attn(.);  x += mlp_scale * mlp(.)

    layer_attn_scale, layer_mlp_scale (n_slots, d), init 1; layer_resid_mix (n_slots, 2, d), init
    (1, 0). The blocks then hold none of their own (blocks.Block)."""

    field = "per_layer_scales"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        self.n, self.d = shape.n_slots, cfg.dim

    def create(self):
        n, d = self.n, self.d
        return {"layer_attn_scale": nn.Parameter(torch.ones(n, d)),
                "layer_mlp_scale": nn.Parameter(torch.ones(n, d)),
                "layer_resid_mix": nn.Parameter(torch.stack([torch.ones(n, d), torch.zeros(n, d)], 1))}

    def at(self, spec: LayerSpec):
        i = spec.slot
        return {"controls": lambda ctx: (ctx.model.layer_attn_scale[i], ctx.model.layer_mlp_scale[i],
                                         ctx.model.layer_resid_mix[i])}


class LNScale(Feature):
    """The normalized block input scaled by 1/sqrt(block + 1) (record (c) L445; model.ln_scale):
    h = rms_norm(x) / sqrt(b + 1) for physical block b, damping deeper blocks. No parameters."""

    field = "ln_scale"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        pass

    def at(self, spec: LayerSpec):
        return {"norm": lambda x, s=(spec.block + 1) ** -0.5: rms_norm(x) * s}


def parallel_residual(x: torch.Tensor, mix: torch.Tensor, ctx, attn, mlp, norm) -> torch.Tensor:
    """GPT-J single-lane parallel residual (record (d) L109-113): x = mix_x0(x); h = norm(x);
    x + attn(h) + mlp(h)."""
    x = mix_x0(x, mix, ctx)
    h = norm(x)
    return x + attn(h) + mlp(h)


class ParallelResidual(Feature):
    """Physical blocks >= model.parallel_from run attention and MLP on the same normalized input
    (`parallel_residual`); -1 = off."""

    field = "parallel_from"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        self.first = cfg.parallel_from

    @classmethod
    def build(cls, cfg: ModelConfig, shape: ModelShape):
        return cls(cfg, shape) if cfg.parallel_from >= 0 else None

    def at(self, spec: LayerSpec):
        return {"residual": parallel_residual} if spec.block >= self.first else {}


class TwoLaneResidual(Feature):
    """Two-lane parallel residual decoder (PR #1530 -> #1855 train_gpt.py L1234-1241, L1291-1322 and
    L1371-1392; model.lanes_from = p, #1855: 8). The final virtual layers whose physical block is >= p
    (they must be the plan's last layers: a suffix) carry two streams. The first of them starts both
    lanes at the stream entering it (before its U-Net skip, which like every "pre" op goes to lane 0);
    then each such layer of block b, with row r = b - p:

        a = attn(norm(mix[0] lane0 + mix[1] x0))        f = mlp(norm(lane1))   (scales included)
        lane0 <- resid[r, 0] lane0 + post[r, 0, 0] a + post[r, 1, 0] f
        lane1 <- resid[r, 1] lane1 + post[r, 0, 1] a + post[r, 1, 1] f

    and the last layer outputs (lane0 + lane1) / 2 (#1855's PARALLEL_FINAL_LANE=mean). Attention and
    the MLP read different lanes, so they run in parallel; resid_mix mixes x0 into attention's read
    only, not into lane 0 itself. Parameters lane_post (n_rows, 2, 2), init 1, lane_resid (n_rows, 2),
    init 1.1, with n_rows = n_blocks - p (#1855 keeps a row for every layer; only these are used)."""

    field = "lanes_from"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        self.first, self.rows = cfg.lanes_from, shape.n_blocks - cfg.lanes_from
        if self.rows < 1:
            raise ValueError(f"model.lanes_from={cfg.lanes_from}: the model has {shape.n_blocks} blocks; "
                             f"choose 0..{shape.n_blocks - 1} (or -1 = off)")

    @classmethod
    def build(cls, cfg: ModelConfig, shape: ModelShape):
        return cls(cfg, shape) if cfg.lanes_from >= 0 else None

    def create(self):
        return {"lane_post": nn.Parameter(torch.ones(self.rows, 2, 2)),
                "lane_resid": nn.Parameter(torch.full((self.rows, 2), 1.1))}

    def layers_of(self, plan):
        specs = plan.layers()
        lane = [s.block >= self.first for s in specs]
        start = len(lane) - lane[::-1].index(False) if False in lane else 0
        if start == len(lane) or any(lane[:start]):
            raise ValueError(f"model.lanes_from={self.first}: plan {plan.spec!r} runs blocks {list(plan.schedule)}; "
                             f"the two-lane layers (blocks >= {self.first}) must be its last layers, "
                             "and at least one")
        ops: list[dict] = [{} for _ in specs]
        if start > 0:
            ops[start - 1]["post"] = self.start_lanes
        for s in specs[start:]:
            fn = self.last_layer if s.v == len(specs) - 1 else self.layer
            ops[s.v]["residual"] = partial(fn, row=s.block - self.first)
        return ops

    @staticmethod
    def start_lanes(x: torch.Tensor, ctx) -> torch.Tensor:
        ctx.lanes["lane1"] = x
        return x

    @staticmethod
    def _lanes(x, mix, ctx, attn, mlp, norm, row):
        lane1 = ctx.lanes.get("lane1", x)  # lanes_from = 0: no earlier layer started them
        a, f = attn(norm(mix_x0(x, mix, ctx))), mlp(norm(lane1))
        post, resid = ctx.model.lane_post[row].to(x.dtype), ctx.model.lane_resid[row].to(x.dtype)
        lane0 = resid[0] * x + post[0, 0] * a + post[1, 0] * f
        lane1 = resid[1] * lane1 + post[0, 1] * a + post[1, 1] * f
        return lane0, lane1

    def layer(self, x, mix, ctx, attn, mlp, norm, row: int) -> torch.Tensor:
        lane0, ctx.lanes["lane1"] = self._lanes(x, mix, ctx, attn, mlp, norm, row)
        return lane0

    def last_layer(self, x, mix, ctx, attn, mlp, norm, row: int) -> torch.Tensor:
        lane0, lane1 = self._lanes(x, mix, ctx, attn, mlp, norm, row)
        return 0.5 * (lane0 + lane1)


class UntiedRepeatMLP(Feature):
    """Repeated visits of a block use their own MLP (record (a) REPEAT_UNTIE_MLP;
    model.untie_repeat_mlp): one MLP per (block, visit >= 1) that runs in training, output projection
    zero-initialized; the attention stays shared. Parameters: repeat_mlps.{k}.fc|proj.weight, k in
    sorted (block, visit) order. A deeper eval-time plan reuses the block's deepest trained visit."""

    field = "untie_repeat_mlp"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        self.keys = shape.repeat_keys
        self.mlps = nn.ModuleList(MLPS[cfg.mlp](cfg) for _ in self.keys)
        for mlp in self.mlps:
            nn.init.zeros_(mlp.proj.weight)

    def create(self):
        return {"repeat_mlps": self.mlps}

    def at(self, spec: LayerSpec):
        if spec.visit_slot == 0:
            return {}
        key = (spec.block, spec.visit_slot)
        if key not in self.keys:
            raise ValueError(f"no repeat MLP for block {spec.block} visit {spec.visit_slot}")
        return {"mlp": self.mlps[self.keys.index(key)]}


class OrthogonalInit(Feature):
    """Orthogonal init of the blocks' input matrices (PR #1855 train_gpt.py L1254-1278, the record
    lineage since #1204; model.ortho_init): every block's c_q, c_k, c_v and MLP fc weight W (rows x
    cols) is drawn by nn.init.orthogonal_ with gain 1, so W W^T = I when rows <= cols (c_q 512x512,
    c_k/c_v 256x512) and W^T W = I when rows > cols (fc 2048x512), instead of nn.Linear's
    kaiming-uniform default. Output projections keep the core's zero init (#1855 zeroes them too).
    Runs after the core's init (GPT.init_weights), so the other draws of a seed are unchanged. It
    is an init, not a per-layer op: no hooks, no parameters."""

    field = "ortho_init"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        pass

    def init_weights(self, model: nn.Module) -> None:
        for block in model.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.fc):
                nn.init.orthogonal_(lin.weight, gain=1.0)


class NormalInit(Feature):
    """PR #29's init (L233-240; model.init_std = s): every block tensor drawn from N(0, s), the
    output projections (attn.proj, mlp.proj) from N(0, s / sqrt(2 L)), L = the final plan's virtual
    layers (PR #29: 0.02 / sqrt(24) for 12 loops), instead of kaiming-uniform inputs and zero
    outputs. As published, "every block tensor" includes model.block=plain_prenorm's two RMSNorm
    weights (the PR loops over all of shared_block.named_parameters(), so its norms start near 0,
    not 1; the final norm, outside the block, keeps 1). The baseline block's 1-D controls (q_gain,
    attn/mlp scales, resid_mix) are not PR #29 tensors and keep their constant init. The embedding
    follows model.embed_init_std (PR #29: 0.02). Runs after the core's init, like OrthogonalInit."""

    field = "init_std"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        if cfg.ortho_init:
            raise ValueError("model.init_std (PR #29's normal init) and model.ortho_init both redraw the block "
                             "matrices; set one of them off (model.init_std=0 or model.ortho_init=false)")
        self.std = cfg.init_std

    def init_weights(self, model: nn.Module) -> None:
        out_std = self.std / (2 * model.plan.n_virtual) ** 0.5
        for block in model.blocks:
            for name, p in block.named_parameters():
                if name in ("attn.proj.weight", "mlp.proj.weight"):
                    nn.init.normal_(p, std=out_std)
                elif p.ndim == 2 or name.endswith("_norm.weight"):
                    nn.init.normal_(p, std=self.std)


TRICKS = (PerLayerScales, LNScale, ParallelResidual, TwoLaneResidual, UntiedRepeatMLP, OrthogonalInit, NormalInit)

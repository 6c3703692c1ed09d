import pytest
import torch

from loopgolf.data.loader import BatchLoader, TokenStream
from loopgolf.metrics import Logger
from loopgolf.model.gpt import GPT
from loopgolf.presets import get_preset
from loopgolf.train.checkpoint import CheckpointStore
from loopgolf.train.loop import Trainer, TrainingDiverged


def _trainer(tiny_shards, tmp_path, steps=8, ckpt_every=0, extra=()):
    cfg = get_preset("tiny").override([f"train.max_steps={steps}", f"train.checkpoint_every={ckpt_every}",
                                       *extra])
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model)
    loader = BatchLoader(TokenStream(tiny_shards["train"]), cfg.data.seq_len, cfg.train.batch_tokens,
                         cfg.train.micro_batch_seqs, 0, 1, torch.device("cpu"))
    return Trainer(cfg, model, loader, torch.device("cpu"), Logger(None, echo=False),
                   checkpoints=CheckpointStore(tmp_path / "checkpoints"))


def _interrupted_then_resumed(tiny_shards, path, ckpt_every, die_at, extra=()):
    """An 8-step run killed at step `die_at` (after a checkpoint), then resumed to the end."""
    first = _trainer(tiny_shards, path, steps=8, ckpt_every=ckpt_every, extra=extra)
    orig = first._train_step

    def dies_after_checkpoint():
        if first.step == die_at:
            raise KeyboardInterrupt
        return orig()
    first._train_step = dies_after_checkpoint
    with pytest.raises(KeyboardInterrupt):
        first.run()
    resumed = _trainer(tiny_shards, path, steps=8, ckpt_every=ckpt_every, extra=extra)
    resumed.resume()
    assert resumed.step == die_at - die_at % ckpt_every
    resumed.run()
    return resumed


def test_training_reduces_loss(tiny_shards, tmp_path):
    tr = _trainer(tiny_shards, tmp_path, steps=12)
    first = []
    orig = tr._train_step

    def spy():
        loss = orig()
        first.append(loss.item())
        return loss
    tr._train_step = spy
    res = tr.run()
    assert res["steps"] == 12 and res["train_tokens"] == 12 * 1024
    assert first[-1] < first[0] - 0.5


def test_micro_batch_split_does_not_change_the_gradient(tiny_shards, tmp_path):
    grads = []
    for micro in (8, 5, 32):  # 4 equal micro-batches, uneven 5+5+...+2, one big batch
        tr = _trainer(tiny_shards, tmp_path, steps=1)
        tr.loader.micro = micro
        tr.opts = []  # keep the accumulated gradient instead of stepping and zeroing it
        tr._train_step()
        grads.append([p.grad.clone() for p in tr.raw_model.parameters()])
    for other in grads[1:]:
        for ga, gb in zip(grads[0], other):
            assert torch.allclose(ga, gb, atol=1e-6, rtol=1e-4), "accumulation must not depend on the split"


def test_resume_after_interruption_matches_uninterrupted_run(tiny_shards, tmp_path):
    straight = _trainer(tiny_shards, tmp_path / "a", steps=8)
    straight.run()

    resumed = _interrupted_then_resumed(tiny_shards, tmp_path / "b", ckpt_every=4, die_at=5)
    assert resumed.step == 8
    for pa, pb in zip(straight.raw_model.parameters(), resumed.raw_model.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_non_finite_loss_stops_with_clear_message(tiny_shards, tmp_path):
    tr = _trainer(tiny_shards, tmp_path, steps=4)
    real = tr.model
    tr.model = lambda x, y, stage=-1: real(x, y, stage=stage) * float("nan")
    with pytest.raises(TrainingDiverged, match="step 1: training loss is nan.*no checkpoint was written"):
        tr.run()


def test_mix_order_reduction_is_switched_by_the_config():
    """pytorch#193061: inductor's mix-order reduction drops gradient writes of shared-parameter
    slices (it made seed-shared-3x4 diverge under compile); the trainer turns it off by default."""
    import torch._inductor.config as inductor_config

    from loopgolf.config import TrainConfig
    from loopgolf.train.loop import _set_mix_order_reduction

    if not hasattr(inductor_config.triton, "mix_order_reduction"):
        pytest.skip("this torch has no mix-order reduction")
    assert TrainConfig().compile_mix_order_reduction is False
    before = inductor_config.triton.mix_order_reduction
    try:
        _set_mix_order_reduction(False)
        assert inductor_config.triton.mix_order_reduction is False
        _set_mix_order_reduction(True)
        assert inductor_config.triton.mix_order_reduction is True
    finally:
        inductor_config.triton.mix_order_reduction = before


QAT = ("quant.qat=ste", "quant.scheme=int6_row", "quant.passthrough_max_numel=0", "quant.qat_start_frac=0.5")


def test_late_qat_switches_on_mid_run_and_leaves_plain_float_weights(tiny_shards, tmp_path):
    from torch.nn.utils import parametrize

    tr = _trainer(tiny_shards, tmp_path, steps=8, extra=QAT)
    params = list(tr.raw_model.parameters())
    assert tr.qat_names and not tr.qat_on  # wrapped, but off until half of the run
    events = []
    tr.logger.log = lambda event, **f: events.append((event, f))
    tr.run()
    qat = [f for e, f in events if e == "qat"]
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in tr.raw_model.modules())
    assert len(qat) == 1 and qat[0]["step"] == 4 and qat[0]["tensors"] == n_linear > 0
    assert not any(parametrize.is_parametrized(m) for m in tr.raw_model.modules())
    assert all(a is b for a, b in zip(params, tr.raw_model.parameters()))  # optimizers kept their tensors
    plain = GPT(tr.cfg.model).state_dict().keys()
    assert set(tr.raw_model.state_dict()) == set(plain)


def test_ste_step_takes_the_gradient_at_the_export_grid_and_keeps_float_weights(tiny_shards, tmp_path):
    """STE QAT in a training step (compress/qat.py QatWeights.applied): the gradients are those of
    the same model with every QAT weight set to its exported value, and after the step's backward
    the weights are the float ones again (the optimizer steps floats, not grid values)."""
    from loopgolf.compress.quant import QUANTIZERS

    tr = _trainer(tiny_shards, tmp_path, extra=QAT[:-1])  # on from step 0
    assert tr.qat_on
    floats = {n: p.detach().clone() for n, p in tr.raw_model.named_parameters()}
    batches = tr.loader.next_step()
    tr._forward_backward(batches)
    assert all(torch.equal(p, floats[n]) for n, p in tr.raw_model.named_parameters())
    twin = GPT(tr.cfg.model)
    q = QUANTIZERS["int6_row"]
    with torch.no_grad():
        for n, p in twin.named_parameters():
            w = floats[n]
            p.copy_(q.dequantize(q.quantize(w, tr.qat.qcfg), tuple(w.shape)) if n in tr.qat_names else w)
    inv = 1.0 / tr.loader.batch_tokens
    for x, y in batches:
        (twin(x, y, stage=tr.stage).sum() * inv).backward()
    for (n, p), (_, t) in zip(tr.raw_model.named_parameters(), twin.named_parameters()):
        assert torch.allclose(p.grad, t.grad, rtol=1e-5, atol=1e-7), n


def test_qat_changes_training_and_resume_with_qat_matches(tiny_shards, tmp_path):
    plain = _trainer(tiny_shards, tmp_path / "p", steps=8)
    plain.run()
    straight = _trainer(tiny_shards, tmp_path / "a", steps=8, extra=QAT)
    straight.run()
    assert any(not torch.equal(a, b) for a, b in zip(plain.raw_model.parameters(), straight.raw_model.parameters()))

    # plain names in the checkpoint, QAT-wrapped model on resume
    resumed = _interrupted_then_resumed(tiny_shards, tmp_path / "b", ckpt_every=6, die_at=7, extra=QAT)
    for pa, pb in zip(straight.raw_model.parameters(), resumed.raw_model.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_nan_error_names_the_checkpoint_only_when_one_exists(tiny_shards, tmp_path):
    tr = _trainer(tiny_shards, tmp_path, steps=8, ckpt_every=2)
    real = tr.model
    tr.model = lambda x, y, stage=-1: real(x, y, stage=stage) * (float("nan") if tr.step >= 3 else 1.0)
    with pytest.raises(TrainingDiverged, match=r"step 4: training loss is nan.*the last checkpoint "
                       r".*checkpoints/checkpoint-00000002.pt was written before it"):
        tr.run()


def test_checkpoint_holds_averages_and_resume_matches_with_ema(tiny_shards, tmp_path):
    ema = ("optim.ema_horizon_frac=0.3",)
    straight = _trainer(tiny_shards, tmp_path / "a", steps=8, extra=ema)
    straight.run()
    resumed = _interrupted_then_resumed(tiny_shards, tmp_path / "b", ckpt_every=3, die_at=7, extra=ema)
    assert resumed.average.count == straight.average.count == 8
    for pa, pb in zip(straight.raw_model.parameters(), resumed.raw_model.parameters()):
        assert torch.equal(pa, pb)  # the averaged weights, bit for bit


def test_trainer_passes_the_stage_and_never_writes_it(tiny_shards, tmp_path):
    tr = _trainer(tiny_shards, tmp_path, steps=8, extra=("model.plan_stages=1+1x1+1@0.5",))
    seen = []
    real = tr.model

    def spy(x, y, stage=-1):
        seen.append(stage)
        return real(x, y, stage=stage)
    tr.model = spy
    tr.run()
    assert seen[0] == 0 and seen[-1] == 1 and sorted(set(seen)) == [0, 1]
    assert len([s for s in seen if s == 0]) == 4 * 4  # 4 steps x 4 micro-batches of the first stage
    assert not hasattr(tr.raw_model, "stage")  # the model holds no mutable stage


def test_one_process_has_no_gradient_sync_wrapper(tiny_shards, tmp_path):
    tr = _trainer(tiny_shards, tmp_path, steps=1)
    assert tr.ddp is None and tr.grad_sync == "none"  # no DDP, no all-reduce: as before DDP existed


# --- several processes: DDP + sharded Muon against one process ----------------------------------
_WORKER = r'''
import json, sys
import torch
from loopgolf import dist
from loopgolf.data.loader import BatchLoader, TokenStream
from loopgolf.metrics import Logger
from loopgolf.model.gpt import GPT
from loopgolf.presets import get_preset
from loopgolf.train.checkpoint import CheckpointStore
from loopgolf.train.loop import Trainer

train, tmp = sys.argv[1].split(","), sys.argv[2]
info = dist.init("cpu")
LOOPED = ["model.plan_stages=3@0.5", "model.untie_repeat_mlp=true", "model.loop_embed=true",
          "optim.weight_decay=0.2", "optim.adam_weight_decay=0.2"]
CASES = {"shared": ["optim.grad_clip=0.5"], "looped": LOOPED,
         "allreduce": LOOPED + ["train.grad_sync=allreduce"], "idle": ["train.batch_tokens=64"],
         "compiled": LOOPED + ["train.warmup_steps=2"]}


class CompiledTrainer(Trainer):
    """Trainer.__init__ compiles on CUDA only; this is that path on CPU (Dynamo, eager backend):
    self.model compiled before the DDP wrap, so DDP(compile(model)), then the compile warm-up."""
    def _wrap_ddp(self):
        self.model = torch.compile(self.raw_model, backend="eager", dynamic=False)
        return super()._wrap_ddp()


def trainer(name, extra, ckpt_every=0, cls=Trainer):
    cfg = get_preset("tiny").override([f"train.checkpoint_every={ckpt_every}", *extra])
    torch.manual_seed(cfg.train.seed)
    loader = BatchLoader(TokenStream(train), cfg.data.seq_len, cfg.train.batch_tokens,
                         cfg.train.micro_batch_seqs, info.rank, info.world_size, torch.device("cpu"))
    tr = cls(cfg, GPT(cfg.model), loader, torch.device("cpu"), Logger(None, echo=False),
             checkpoints=CheckpointStore(f"{tmp}/{name}-{info.world_size}"))
    if cls is CompiledTrainer and tr.ddp is None:  # one process
        tr.model = torch.compile(tr.raw_model, backend="eager", dynamic=False)
    return tr


def run(tr, die_at=None):
    losses, orig = [], tr._train_step

    def step():
        if tr.step == die_at:
            raise KeyboardInterrupt
        loss = orig()
        losses.append(dist.all_reduce_sum(loss.detach().clone()).item())
        return loss
    tr._train_step = step
    try:
        tr.run()
    except KeyboardInterrupt:
        pass
    return losses


out = {}
for name, extra in CASES.items():
    tr = trainer(name, extra, cls=CompiledTrainer if name == "compiled" else Trainer)
    out[name + "_warmup_s"] = tr.warmup()
    out[name] = {"losses": run(tr), "params": torch.cat([p.detach().reshape(-1) for p in tr.raw_model.parameters()]),
                 "find_unused": tr.ddp.find_unused_parameters if tr.ddp is not None else None}
# killed at step 5 after the step-4 checkpoint, resumed to the end
first = trainer("resume", LOOPED, ckpt_every=4)
run(first, die_at=5)
resumed = trainer("resume", LOOPED, ckpt_every=4)
resumed.resume()
out["resume"] = {"losses": run(resumed), "from_step": 4,
                 "params": torch.cat([p.detach().reshape(-1) for p in resumed.raw_model.parameters()])}
ck, _ = resumed.store.load_latest()
out["checkpoint_keys"] = sorted(ck["model"])
out["model_keys"] = sorted(GPT(resumed.cfg.model).state_dict())
if info.is_main:
    torch.save(out, f"{tmp}/out-{info.world_size}.pt")
dist.cleanup()
'''


def _torchrun(script, nproc, *args):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(script), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
@pytest.mark.dist
def test_ddp_and_sharded_muon_match_one_process_on_2_and_3_ranks(tiny_shards, tmp_path):
    """The same 8 steps on 1, 2 and 3 gloo ranks: tiny's shared block (1+1x2+1); a looped
    preset-like config whose first plan stage leaves the untied repeat MLPs unused (DDP finds
    them; they keep grad None, so weight decay skips them as on one process); the allreduce
    engine; a 2-sequence batch (3 ranks: rank 0 owns none); the looped config compiled (Dynamo)
    with its warm-up of 2 steps per stage restored before the timed run; a resume under DDP.
    32 sequences split 10/11/11 over 3 ranks; Muon's 18-20 matrices (4 shapes) shared by NS
    FLOPs. Tolerance: 2e-5 nats per step and 1e-4 per weight (gradient sums and Newton-Schulz
    batches are reordered; measured <= 1e-6 nats and 3e-6 per weight)."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    train = ",".join(map(str, tiny_shards["train"]))
    for nproc in (1, 2, 3):
        _torchrun(script, nproc, train, tmp_path)
    one = torch.load(tmp_path / "out-1.pt", weights_only=True)
    assert one["looped"]["find_unused"] is None and len(one["looped"]["losses"]) == 8
    for world in (2, 3):
        many = torch.load(tmp_path / f"out-{world}.pt", weights_only=True)
        for case in ("shared", "looped", "allreduce", "idle", "compiled", "resume"):
            a, b = one[case], many[case]
            assert len(a["losses"]) == len(b["losses"]) > 0, case
            dl = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
            dp = (a["params"] - b["params"]).abs().max().item()
            assert dl < 2e-5 and dp < 1e-4, (world, case, dl, dp)
        assert many["looped"]["find_unused"] is True and many["shared"]["find_unused"] is False
        assert many["compiled_warmup_s"] > 0 and many["compiled"]["find_unused"] is True
        # the warm-up left weights, optimizer and data position as they were: eager's losses
        assert max(abs(x - y) for x, y in zip(many["compiled"]["losses"], many["looped"]["losses"])) < 2e-5
        assert many["allreduce"]["find_unused"] is None  # no DDP wrapper
        assert many["checkpoint_keys"] == many["model_keys"]  # raw names: no "module." prefix
        assert torch.equal(many["resume"]["params"], many["looped"]["params"])  # resume is exact


GROWING = ("model.plan_stages=1+1x1+1@0.5", "train.seq_len_schedule=8@0.25,16@0.5", "train.warmup_steps=1")


def test_growing_context_compiles_every_shape_once_before_the_clock(tiny_shards, tmp_path):
    """tiny (rows of 32, 1024 tokens per step, 8 steps, budget 0: progress = step / 8) with rows of 8
    until 25 %, 16 until 50 %, then 32, and the loops on from 50 %: the run meets (stage 0, T=8),
    (0, 16), (1, 32). Each is compiled exactly once, in the warm-up; the timed loop compiles nothing
    and sees the scheduled shapes at the scheduled steps, with 1024 tokens in every step."""
    tr = _trainer(tiny_shards, tmp_path, steps=8, extra=GROWING)
    assert tr.table.shapes() == [(0, 8), (0, 16), (1, 32)]
    compiled = []  # (stage-free) input shape of each graph the backend is asked to compile

    def backend(gm, example_inputs):
        compiled.append(next(tuple(t.shape) for t in example_inputs if t.dtype == torch.long))
        return gm.forward
    tr.model = torch.compile(tr.raw_model, backend=backend, dynamic=False, fullgraph=True)
    torch._dynamo.reset()
    tr.warmup()
    assert compiled == [(32, 8), (16, 16), (8, 32)]  # every micro-batch holds 8 x 32 = 256 tokens
    assert tr.loader.seq_len == 32 and tr.loader.stream.position == 0  # restored after the warm-up
    seen = []
    real = tr.model

    def spy(x, y, stage=-1):
        seen.append((tr.step, stage, tuple(x.shape)))
        return real(x, y, stage=stage)
    tr.model = spy
    res = tr.run()
    assert len(compiled) == 3 and res["compile"]["loop"]["graphs"] == 0  # nothing compiled on the clock
    by_step = {}
    for step, stage, shape in seen:
        by_step.setdefault(step, []).append((stage, shape))
    want = {0: (0, 8), 1: (0, 8), 2: (0, 16), 3: (0, 16), 4: (1, 32), 5: (1, 32), 6: (1, 32), 7: (1, 32)}
    for step, (stage, T) in want.items():
        assert {s for s, _ in by_step[step]} == {stage}
        assert {shape[1] for _, shape in by_step[step]} == {T}
        assert sum(shape[0] * shape[1] for _, shape in by_step[step]) == 1024  # tokens per step fixed
    assert set(res["stage_ms_per_step"]) == {"1+1x1+1 T=8", "1+1x1+1 T=16", "1+1x2+1 T=32"}
    assert res["stage_steps"] == {"1+1x1+1 T=8": 2, "1+1x1+1 T=16": 2, "1+1x2+1 T=32": 4}


def test_growing_context_resumes_on_the_same_shapes(tiny_shards, tmp_path):
    ref = _trainer(tiny_shards, tmp_path / "ref", steps=8, extra=GROWING[:2])
    ref.run()
    resumed = _interrupted_then_resumed(tiny_shards, tmp_path / "cut", ckpt_every=3, die_at=4, extra=GROWING[:2])
    assert resumed.loader.seq_len == 32
    for (n, a), b in zip(ref.raw_model.state_dict().items(), resumed.raw_model.state_dict().values()):
        assert torch.equal(a, b), n


def test_budget_stop_reads_each_step_one_step_late(tiny_shards, tmp_path):
    """A wall-clock budget stops the run with a final logged step equal to the steps run, and the
    clock reaches the budget less the vote's two-step look-ahead (train/step_stats.py); every
    step's loss is read back once, in order."""
    tr = _trainer(tiny_shards, tmp_path, steps=10_000, extra=("train.budget_s=0.6",))
    seen = []
    orig = tr._after_step

    def spy(rec, final=False):
        seen.append(rec.step)
        return orig(rec, final)
    tr._after_step = spy
    res = tr.run()
    assert 0 < res["steps"] < 10_000
    assert seen == list(range(1, res["steps"] + 1))
    assert res["train_seconds"] >= 0.6 - 3 * res["ms_per_step"] / 1000

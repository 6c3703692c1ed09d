import dataclasses

import pytest
import torch
import torch.nn.functional as F

from loopgolf.config import ModelConfig
from loopgolf.data.tokenizer import BOS_ID
from loopgolf.model.blocks import plain_attend
from loopgolf.model.doc_attention import (DocIsolatedAttention, cu_seqlens, doc_mask, segment_ids,
                                          varlen_attention)
from loopgolf.model.gpt import GPT
from loopgolf.model.wiring import Context


def _cfg(**kw):
    base = dict(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48, plan="3", rope_dims=4)
    return ModelConfig(**{**base, **kw})


def _randomize(model):
    torch.manual_seed(1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model


def _docs():
    """A row made of a fragment (no BOS: a document cut by the row start) and two documents."""
    g = torch.Generator().manual_seed(0)
    frag, d1, d2 = (torch.randint(2, 64, (n,), generator=g) for n in (3, 6, 5))
    d1[0] = d2[0] = BOS_ID
    return [frag, d1, d2]


def test_segments_and_cu_seqlens_have_the_known_values():
    idx = torch.tensor([[5, BOS_ID, 7, 8, BOS_ID, 9], [BOS_ID, 3, 4, 5, 6, 7]])
    assert segment_ids(idx).tolist() == [[0, 1, 1, 1, 2, 2], [1, 1, 1, 1, 1, 1]]
    assert cu_seqlens(idx).tolist() == [0, 1, 4, 6, 12]  # row starts and BOS positions, then B*T
    m = doc_mask(segment_ids(idx))[0, 0]
    assert m[3].tolist() == [False, True, True, True, False, False]  # only its own document, causally
    assert m[4].tolist() == [False, False, False, False, True, False]


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, causal):
    """FlashAttention's varlen contract, one segment at a time with SDPA ((total, heads, D) layout)."""
    assert causal and torch.equal(cu_q, cu_k) and max_q >= int((cu_q[1:] - cu_q[:-1]).max())
    out = []
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        qs, ks, vs = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
        out.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=softmax_scale,
                                                  enable_gqa=True)[0].transpose(0, 1))
    return torch.cat(out)


@pytest.mark.parametrize("kernel", ["sdpa_mask", "flex", "varlen"])
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@torch.no_grad()  # FlexAttention has no backward on CPU
def test_every_kernel_equals_attention_per_document(kernel, monkeypatch):
    """GQA (4 heads, 2 KV heads) after partial RoPE: the isolated kernel on the packed row equals
    plain causal attention run on each document alone (its positions restarting at 0)."""
    docs = _docs()
    row = torch.cat(docs)[None]
    feat = DocIsolatedAttention(_cfg(), None, varlen_fn=_reference_varlen)
    monkeypatch.setattr(feat, "kernel", lambda device: kernel)
    model = _randomize(GPT(_cfg()))
    attn, layer = model.blocks[0].attn, model._stage_layers[-1][0]
    isolated = dataclasses.replace(layer, attend=feat.attend)
    x_row = torch.randn(1, row.size(1), 32)
    y_row = attn(x_row, Context(model, row, x_row), isolated)
    start = 0
    for d in docs:
        x_doc = x_row[:, start:start + len(d)]
        y_doc = attn(x_doc, Context(model, d[None], x_doc), layer)  # default hook: plain causal attention
        assert torch.allclose(y_row[:, start:start + len(d)], y_doc, atol=1e-5), (kernel, start)
        start += len(d)
    y_plain = attn(x_row, Context(model, row, x_row), layer)
    assert not torch.allclose(y_plain, y_row, atol=1e-3)  # without isolation the documents mix


def test_isolated_model_scores_each_document_as_if_alone():
    docs = _docs()
    row = torch.cat(docs)[None]
    iso = _randomize(GPT(_cfg(doc_isolated_attn=True, xsa_last=-1)))
    plain = GPT(_cfg(xsa_last=-1))
    plain.load_state_dict(iso.state_dict())
    with torch.no_grad():
        packed = iso.logits(row)
        alone = torch.cat([plain.logits(d[None]) for d in docs], dim=1)
        assert torch.allclose(packed, alone, atol=1e-4)
        assert not torch.allclose(plain.logits(row), alone, atol=1e-3)


def test_off_by_default_and_one_kernel_per_device():
    assert all(layer.attend is plain_attend for layer in GPT(_cfg())._stage_layers[-1])
    feat = DocIsolatedAttention(_cfg(), None, varlen_fn=None)
    assert feat.kernel(torch.device("cpu")) == "sdpa_mask"
    assert feat.kernel(torch.device("cuda")) == "sdpa_mask"  # eager CUDA without FA3
    assert DocIsolatedAttention(_cfg(), None, varlen_fn=_reference_varlen).kernel(torch.device("cuda")) == "varlen"


def test_varlen_layout_round_trips_a_batch_of_rows():
    idx = torch.tensor([[BOS_ID, 4, 5, BOS_ID, 6], [7, 8, BOS_ID, 9, 10]])
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    got = varlen_attention(q, k, v, cu_seqlens(idx), _reference_varlen)
    mask = doc_mask(segment_ids(idx))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert torch.allclose(got, want, atol=1e-5)

"""AWQ: Activation-aware Weight Quantization (Lin et al., 2023, "AWQ: Activation-aware Weight Quantization
for LLM Compression and Acceleration", arXiv:2306.00978), following the llm-awq / AutoAWQ implementation.

A few input channels carry much larger activations than the rest, so the weights in those columns
matter most, yet round-to-nearest int4 gives them the same absolute error as any other. AWQ multiplies
column j of a linear's weight by s_j and divides the op that produces input channel j by s_j: the float
function is unchanged, and the salient columns now take a larger share of their group's range, so
their rounding error shrinks relative to their size. Then each group's range is clipped where that
lowers the group's output error, and the weights are rounded to nearest in the int4 format.

Scaling groups, in order (folded as SmoothQuant folds them, see folding.py), each
scored on the output of the module it feeds:

    qkv_proj  <- attn_norm weight            scored on the whole attention block
    o_proj    <- v rows of qkv_proj          scored on o_proj (only without GQA, as AutoAWQ)
    gate_up   <- mlp_norm weight             scored on the whole MLP
    down_proj <- up rows of gate_up          scored on down_proj

Choices:
  - scales s = mean|x|^ratio, ratio in {0, 1/20, ..., 19/20} (N_GRID = 20), normalised by
    sqrt(max(s) * min(s)); the paper's form, not AutoAWQ's newer "duo scaling" (x_mean^r / w_mean^(1-r)).
    Ratio 0 is s = 1, plain round-to-nearest, so the chosen scales never score worse than it.
  - search tokens: the first whole calibration sequences, at most MAX_SEARCH_TOKENS = 4096 tokens (at
    least one sequence: attention needs whole sequences), for both mean|x| and the losses.
  - clipping (AutoAWQ's auto_clip): per output channel and group, the range [w_min, w_max] (zero always
    inside, as the format keeps it) shrunk to [r*w_min, r*w_max], r in CLIP_RATIOS = {1.0, 0.95, ..., 0.5}
    (AutoAWQ stops at 0.55), minimising the group's share of the output error on CLIP_TOKENS = 512
    tokens strided through the search tokens, CLIP_CHUNK output channels at a time. The q and k rows of
    qkv_proj are not clipped (as AutoAWQ): their error reaches the output through softmax(q k^T),
    which a linear's output error does not measure.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from builder.quantize.common import to_quantized
from builder.quantize.layerwise import LINEARS, Batch, layer_inputs, replace_submodule, run_attention, submodule
from builder.quantize.folding import apply_scales, preceding_rows
from engine.layers.quantization import QuantizationConfig, int4

N_GRID = 20
MAX_SEARCH_TOKENS = 4096
CLIP_TOKENS = 512
CLIP_RATIOS = tuple(1.0 - i / N_GRID for i in range(N_GRID // 2 + 1))  # 1.0, 0.95, ..., 0.5
CLIP_CHUNK = 256  # output channels per clip step: bounds the [groups, tokens, chunk] outputs

# Scaling groups in data-flow order; a group is skipped when no op before it can absorb 1/s.
SCALED = LINEARS


# -- the int4 grid ---------------------------------------------------------------------------------

def fake_quantize(weight: torch.Tensor, group_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """weight [out, in] -> float32 [out, in] rounded to the int4 format and back: what the engine will
    multiply by for a model of `dtype` (its layers keep their scales in that dtype)."""
    scales, zeros = int4.group_params(weight, group_size)
    q = int4.quantize_with(weight, scales, zeros, group_size)
    g = int4.group_index(weight.shape[1], group_size, weight.device)
    return (q - zeros[:, g]) * scales.to(dtype).float()[:, g]


def group_range(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (min, max) as int4.group_params sees them, zero always inside: [out, groups] each."""
    out, n = weight.shape
    groups = -(-n // group_size)
    # Zero padding of a short last group cannot widen a range that contains zero anyway.
    w = F.pad(weight.float(), (0, groups * group_size - n)).view(out, groups, group_size)
    return w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)


# -- folding scales --------------------------------------------------------------------------------

def scaled_linears(layer: nn.Module) -> list[str]:
    """The linears whose input scales can be folded into the op before them (o_proj only without GQA)."""
    return [name for name in SCALED if preceding_rows(layer, name) is not None]


# -- the scale search ------------------------------------------------------------------------------

@contextmanager
def weight_swapped(linear: nn.Module, weight: torch.Tensor) -> Iterator[None]:
    original = linear.weight.data
    linear.weight.data = weight
    try:
        yield
    finally:
        linear.weight.data = original


def output_error(layer: nn.Module, name: str, inputs: dict[str, torch.Tensor], batch: Batch
                 ) -> Callable[[torch.Tensor], float]:
    """weight -> mean squared drift of the module `name` feeds (see the module docstring) when `name`
    multiplies by that weight instead of its own."""
    linear = submodule(layer, name)
    x = inputs[name]
    if name == "attn.qkv_proj":
        def run() -> torch.Tensor:
            return run_attention(layer, x, batch)  # x is attn_norm's output already
    elif name == "mlp.gate_up_proj":
        def run() -> torch.Tensor:
            return layer.mlp(x)  # x is mlp_norm's output already
    else:
        def run() -> torch.Tensor:
            return linear(x)
    reference = run().float()

    def error(weight: torch.Tensor) -> float:
        with weight_swapped(linear, weight):
            return (run().float() - reference).pow(2).mean().item()

    return error


def search_scales(x: torch.Tensor, weight: torch.Tensor, group_size: int,
                  error: Callable[[torch.Tensor], float]) -> torch.Tensor:
    """The s [in] of the ratio grid whose fake-quantized W' = Q(W * s) / s scores lowest by `error`;
    x [tokens, in] is the linear's input, weight [out, in] its float weight."""
    x_mean = x.abs().float().mean(0)  # [in]
    w = weight.float()
    best, best_s = math.inf, None
    for i in range(N_GRID):
        s = x_mean.pow(i / N_GRID).clamp(min=1e-4)
        # Centre s around 1 so that neither W * s nor the folded 1/s drift far from their scale.
        s = s / (s.max() * s.min()).sqrt()
        loss = error((fake_quantize(w * s, group_size, weight.dtype) / s).to(weight.dtype))
        if loss < best:
            best, best_s = loss, s
    if best_s is None:
        raise ValueError("awq: every scale candidate gave a non-finite loss")
    return best_s


# -- the clip search -------------------------------------------------------------------------------

def _group_outputs(xg: torch.Tensor, weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each group's share of the output: xg [groups, tokens, group_size], weight [out, in] ->
    [groups, tokens, out] (sums to x W^T over groups)."""
    out, n = weight.shape
    groups = xg.shape[0]
    wg = F.pad(weight, (0, groups * group_size - n)).view(out, groups, group_size).transpose(0, 1)
    return torch.bmm(xg, wg.transpose(1, 2))


def clamp_groups(weight: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, group_size: int) -> torch.Tensor:
    """weight [out, in] clamped to per-group bounds lo, hi [out, groups]."""
    g = int4.group_index(weight.shape[1], group_size, weight.device)
    return torch.clamp(weight, lo[:, g], hi[:, g])


@torch.no_grad()
def search_clip(weight: torch.Tensor, x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (output channel, group) clip bounds (lo, hi) [out, groups], each a ratio of CLIP_RATIOS
    times the group's (min, max), minimising the group's output error on x [tokens, in]."""
    out, n = weight.shape
    groups = -(-n // group_size)
    # [groups, tokens, group_size]; padded input columns are zero, so padded weights contribute nothing.
    xg = F.pad(x.float(), (0, groups * group_size - n)).view(-1, groups, group_size).transpose(0, 1)
    los, his = [], []
    for start in range(0, out, CLIP_CHUNK):
        w = weight[start:start + CLIP_CHUNK].float()  # [chunk, in]
        w_min, w_max = group_range(w, group_size)  # [chunk, groups]
        reference = _group_outputs(xg, w, group_size)  # [groups, tokens, chunk]
        best_err = torch.full_like(w_min, math.inf)
        best_ratio = torch.ones_like(w_min)
        for r in CLIP_RATIOS:
            q = fake_quantize(clamp_groups(w, w_min * r, w_max * r, group_size), group_size, weight.dtype)
            err = (_group_outputs(xg, q, group_size) - reference).pow(2).mean(1).T  # [chunk, groups]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_ratio = torch.where(better, torch.full_like(best_ratio, r), best_ratio)
        los.append(w_min * best_ratio)
        his.append(w_max * best_ratio)
    return torch.cat(los), torch.cat(his)


def clip_rows(layer: nn.Module, name: str) -> slice:
    """The rows of `name`'s weight that are clipped: all but qkv_proj's q and k rows."""
    if name == "attn.qkv_proj":
        attn = layer.attn
        return slice(attn.q_size + attn.kv_size, attn.q_size + 2 * attn.kv_size)
    return slice(None)


@torch.no_grad()
def clip_weight(layer: nn.Module, name: str, x: torch.Tensor, group_size: int) -> None:
    """Clamp `name`'s weight (its clip_rows) in place to the searched bounds; x [tokens, in] its input."""
    weight = submodule(layer, name).weight[clip_rows(layer, name)]  # a view: clamped in place
    lo, hi = search_clip(weight, x, group_size)
    weight.copy_(clamp_groups(weight.float(), lo, hi, group_size).to(weight.dtype))


# -- the layer quantizer ---------------------------------------------------------------------------

def first_sequences(x: torch.Tensor, batch: Batch, max_tokens: int) -> tuple[torch.Tensor, Batch]:
    """The first whole sequences of the batch covering at most max_tokens (at least one): x [k*L, hidden]
    and their Batch (the same scratch KV cache; their blocks come first in it)."""
    seq_len = batch.seq_len
    k = max(1, min(batch.num_seqs, max_tokens // seq_len))
    if k == batch.num_seqs:
        return x, batch
    n = k * seq_len
    return x[:n], Batch(batch.positions[:n], batch.kv_cache, batch.meta.first_sequences(k), k, seq_len)


def strided_tokens(x: torch.Tensor, count: int) -> torch.Tensor:
    """At most `count` rows of x [tokens, in], spread evenly (calibration sequences differ more than
    neighbouring tokens do)."""
    return x[::max(1, x.shape[0] // count)][:count]


@torch.no_grad()
def quantize_layer(layer: nn.Module, x: torch.Tensor, batch: Batch, config: QuantizationConfig) -> None:
    x, batch = first_sequences(x, batch, MAX_SEARCH_TOKENS)
    inputs = layer_inputs(layer, x, batch)
    # One capture serves every search: a group's scales change only its own input (x/s) and the block
    # outputs stay the same, except o_proj's and down_proj's inputs (through v and up rows), which
    # change only once their own search is done.
    for name in scaled_linears(layer):
        s = search_scales(inputs[name], submodule(layer, name).weight, config.group_size,
                          output_error(layer, name, inputs, batch))
        apply_scales(layer, name, s)
    # The clip search needs the inputs the scaled weights will see.
    inputs = layer_inputs(layer, x, batch)
    for name in LINEARS:
        clip_weight(layer, name, strided_tokens(inputs[name], CLIP_TOKENS), config.group_size)
    for name in LINEARS:
        replace_submodule(layer, name, to_quantized(submodule(layer, name), config))

"""Quantizing a loaded float model in place, one decoder layer at a time (the builder's offline step,
like gpt-fast's quantize.py): each scheme's layer quantizer replaces the layer's four linears with
quantized ones of the scheme's format, calibrating on the layer's real inputs where the scheme needs
them. The lm_head and the embedding, when asked for, are rounded to nearest (the embedding as int8
rows whatever the scheme: engine/layers/embedding.py)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from builder.quantize import awq, fp8, gptq, rtn, smoothquant
from builder.quantize.common import to_quantized
from engine.model_runner import default_dtype
from builder.quantize.layerwise import Batch, make_batch, run_layer
from engine.layers.embedding import Int8Embedding
from engine.layers.quantization import QuantizationConfig, int8_wo

# (decoder layer, its input x [N*L, hidden] or None, the batch or None, config) -> None; in place.
LayerQuantizer = Callable[[nn.Module, "torch.Tensor | None", "Batch | None", QuantizationConfig], None]

QUANTIZERS: dict[str, LayerQuantizer] = {
    "int8_wo": rtn.quantize_layer,
    "int4_wo": rtn.quantize_layer,
    "fp8": fp8.quantize_layer,
    "smoothquant": smoothquant.quantize_layer,
    "awq": awq.quantize_layer,
    "gptq": gptq.quantize_layer,
}


@torch.no_grad()
def quantize_model(model: nn.Module, config: QuantizationConfig, calibration_ids: torch.Tensor | None,
                   progress: Callable[[int, int], None] = lambda done, total: None) -> None:
    """`calibration_ids` [N, L] token ids, needed by the calibrated schemes (awq, gptq, smoothquant; fp8
    with static activation scales)."""
    quantize_layer = QUANTIZERS[config.scheme]
    total = len(model.layers)
    x = None  # with calibration: the residual stream after the last layer
    if config.calibrated:
        if calibration_ids is None:
            raise ValueError(f"{config.scheme} needs calibration data")
        device = model.device
        batch = make_batch(model, *calibration_ids.shape)
        x = model.embed_tokens(calibration_ids.to(device).flatten())
        for i, layer in enumerate(model.layers):
            quantize_layer(layer, x, batch, config)
            x = run_layer(layer, x, batch)  # the quantized layer's output: the next one calibrates on it
            progress(i + 1, total)
    else:
        for i, layer in enumerate(model.layers):
            quantize_layer(layer, None, None, config)
            progress(i + 1, total)
    if config.lm_head:
        head = model.lm_head
        if head.weight is model.embed_tokens.weight:  # tied: the head gets its own quantized copy
            head = nn.Linear(head.in_features, head.out_features, bias=False, device=head.weight.device,
                             dtype=head.weight.dtype)
            head.weight.copy_(model.embed_tokens.weight)
        if config.static_fp8_inputs:
            model.lm_head = fp8.quantized_with_input_scale(head, model.norm(x), config)
        else:
            model.lm_head = to_quantized(head, config)
        model.lm_head_quantized = True
    if config.embedding:  # after the head: a tied head copies the float table
        model.embed_tokens = int8_embedding(model.embed_tokens)


def int8_embedding(embedding: nn.Embedding) -> Int8Embedding:
    weight = embedding.weight
    with torch.device(weight.device), default_dtype(weight.dtype):
        module = Int8Embedding(embedding.num_embeddings, embedding.embedding_dim)
    for name, value in int8_wo.quantize(weight, None).items():  # a row is an output channel
        getattr(module, name).copy_(value)
    return module

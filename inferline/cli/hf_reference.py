"""The HF transformers side of `inferline bench --compare-hf`: the same checkpoint loaded with
AutoModelForCausalLM (eager attention, same dtype and device), timed with model.generate on the same
prompts. Only imported when the comparison is asked for."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from engine import InvalidParameterError
from engine.loader import open_checkpoint
from inferline.cli.bench_report import CaseTiming
from inferline.cli.device import synchronize


@dataclass(frozen=True)
class HFModelSpec:
    source: str  # what from_pretrained gets: the folder
    gguf_file: str | None
    model_class: type


def resolve_hf_model(model: str) -> HFModelSpec:
    """Find the checkpoint and import transformers' code for it (tens of MB of RSS) now, before the memory
    tracker starts, so HF's peak counts its model, not its Python modules (ours are imported already)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    ckpt = open_checkpoint(model)  # the same resolution as the engine: bundled name, folder or .gguf
    source = str(ckpt.path.parent if ckpt.format == "gguf" else ckpt.path)
    gguf_file = ckpt.path.name if ckpt.format == "gguf" else None
    try:
        config = AutoConfig.from_pretrained(source, gguf_file=gguf_file, local_files_only=True)
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # what AutoModelForCausalLM would pick
    except (OSError, ValueError, KeyError, NotImplementedError) as err:
        raise InvalidParameterError("--compare-hf", f"transformers cannot load {model!r}: {err}") from None
    return HFModelSpec(source, gguf_file, model_class)


class HFSide:
    name = "hf-transformers"

    def __init__(self, spec: HFModelSpec, device: str, dtype: torch.dtype):
        kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "eager", "local_files_only": True}
        if spec.gguf_file is not None:
            kwargs["gguf_file"] = spec.gguf_file
        self.model = spec.model_class.from_pretrained(spec.source, **kwargs).to(device).eval()
        self.device = device
        self.dtype = dtype
        eos = self.model.generation_config.eos_token_id
        self._pad_id = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0

    @property
    def precision(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def measure(self, prompts: list[list[int]], output_len: int, warmup: int, runs: int) -> CaseTiming:
        input_ids = torch.tensor(prompts, device=self.device)  # [batch, in]: equal lengths, no padding
        for _ in range(warmup):
            self._generate(input_ids, output_len)
        latencies, token_ids = [], []
        for _ in range(runs):
            latency, token_ids = self._generate(input_ids, output_len)
            latencies.append(latency)
        # generate() hides its steps, so the time to first token is a separate one-token generate.
        for _ in range(warmup):
            self._generate(input_ids, 1)
        ttft = statistics.median(self._generate(input_ids, 1)[0] for _ in range(runs))
        return CaseTiming(latencies, ttft, token_ids)

    @torch.inference_mode()
    def _generate(self, input_ids: torch.Tensor, new_tokens: int) -> tuple[float, list[list[int]]]:
        # A fresh config: the checkpoint's own (temperature, top_p, ...) would only add warnings.
        config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                  pad_token_id=self._pad_id, eos_token_id=self.model.generation_config.eos_token_id)
        synchronize(self.device)
        start = time.perf_counter()
        out = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
        synchronize(self.device)
        latency = time.perf_counter() - start
        generated = out[:, input_ids.shape[1]:]
        if generated.shape[1] != new_tokens:
            raise RuntimeError(f"HF generated {generated.shape[1]} tokens, expected {new_tokens}")
        return latency, generated.tolist()

    def close(self) -> None:
        del self.model

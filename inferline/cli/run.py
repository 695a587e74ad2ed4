"""`inferline run`: generate from a few prompts, like TensorRT-LLM's examples/run.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from engine import CompletionOutput, Engine, EngineConfig, InvalidParameterError, SamplingParams
from inferline.cli.device import DEVICE_HELP, DTYPE_HELP, KV_CACHE_DTYPE_HELP, resolve_device
from inferline.cli.errors import user_errors


def run(
    input_text: Annotated[list[str], typer.Option(
        "--input-text", help="Prompt, tokenized as-is (plus only the special tokens the tokenizer itself adds); repeat for a batch.")],
    max_output_len: Annotated[int, typer.Option(help="Tokens to generate per prompt (at most).")],
    model: Annotated[Optional[str], typer.Option(
        help="Bundled model name (smollm2-135m), HF checkpoint folder or .gguf file.")] = None,
    engine_dir: Annotated[Optional[Path], typer.Option(
        help="Reserved for built engines; until the builder exists it is read as a model path (same as --model).")] = None,
    chat: Annotated[bool, typer.Option(
        help="Wrap each prompt as a user message in the model's chat template instead of feeding it raw.")] = False,
    json_output: Annotated[bool, typer.Option(
        "--json", help='Print one JSON object {"outputs": [{"text", "token_ids", "finish_reason"}]} and nothing else.')] = False,
    dtype: Annotated[Optional[str], typer.Option(help=DTYPE_HELP)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    kv_cache_dtype: Annotated[str, typer.Option(help=KV_CACHE_DTYPE_HELP)] = "auto",
    temperature: Annotated[float, typer.Option(help="0 = greedy (the default).")] = 0.0,
    top_k: Annotated[int, typer.Option(help="0 = off.")] = 0,
    top_p: Annotated[float, typer.Option(help="1.0 = off.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed, for reproducible non-greedy output.")] = None,
) -> None:
    """Generate text for each --input-text and print it (greedy unless --temperature is set)."""
    with user_errors():
        model_path = _model_arg(model, engine_dir)
        # Everything cheap is validated before the ~seconds-long model load.
        params = SamplingParams(max_tokens=max_output_len, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=seed)
        config = EngineConfig(model=model_path, device=resolve_device(device), dtype=dtype,
                              max_batch_size=len(input_text), kv_cache_dtype=kv_cache_dtype)
        engine = Engine(config)
        prompts = [_prompt(engine, text, chat) for text in input_text]
        outputs = engine.generate(prompts, params)
    if json_output:
        typer.echo(json.dumps({"outputs": [_as_json(o) for o in outputs]}, ensure_ascii=False))
        return
    for i, (text, out) in enumerate(zip(input_text, outputs)):
        typer.echo(f'Input [Text {i}]: "{text}"')
        typer.echo(f'Output [Text {i} Beam 0]: "{out.text}"')


def _model_arg(model: str | None, engine_dir: Path | None) -> str:
    if engine_dir is not None and model is not None and str(engine_dir) != model:
        raise InvalidParameterError("model", "give --model or --engine-dir, not both")
    if engine_dir is not None:
        return str(engine_dir)
    if model is None:
        raise InvalidParameterError("model", "missing; pass --model (or --engine-dir)")
    return model


def _prompt(engine: Engine, text: str, chat: bool) -> str | list[int]:
    if chat:
        return engine.apply_chat_template([{"role": "user", "content": text}])
    return text  # the engine encodes it with tokenizer.encode, special tokens as the tokenizer adds them


def _as_json(out: CompletionOutput) -> dict[str, object]:
    return {"text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason}

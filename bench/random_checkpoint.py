"""Write a Hugging Face Llama folder of a given shape with random weights (speed and memory do not
depend on the values), for benchmarks of models we cannot download here.

    python bench/random_checkpoint.py --shape baichuan2-7b --out /tmp/baichuan2-7b-random [--device cuda]

Baichuan2-7B is a Llama with a fused W_pack and a NormHead; as a plain Llama (what our builder exports
it as) it has the same shapes, so the same speed. The bundled SmolLM2 tokenizer is saved alongside: the
builder's calibration and quality report need one, and its ids fit any larger vocabulary. Pass
--tokenizer DIR to copy a saved tokenizer instead (a machine without the bundled GGUF).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads, vocab, context (from the model's config.json)
    "baichuan2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=125696, max_position_embeddings=4096),
    # Llama-3-8B: GQA (8 KV heads for 32 query heads), the other attention layout the engine must be fast on
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,  # script tests
                 num_key_value_heads=4, vocab_size=49152, max_position_embeddings=1024),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
}


def tensors_of(shape: dict, dtype: torch.dtype, device: str, seed: int) -> dict[str, torch.Tensor]:
    h, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(*size: int) -> torch.Tensor:
        # std 0.02 like HF's init: activations stay finite through 32 layers in bf16
        return (torch.randn(*size, generator=gen, device=device, dtype=torch.float32) * 0.02).to(dtype).cpu()

    out = {"model.embed_tokens.weight": rand(shape["vocab_size"], h), "model.norm.weight": torch.ones(h, dtype=dtype),
           "lm_head.weight": rand(shape["vocab_size"], h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out |= {p + "self_attn.q_proj.weight": rand(h, h), p + "self_attn.k_proj.weight": rand(kv, h),
                p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, h),
                p + "mlp.gate_proj.weight": rand(inter, h), p + "mlp.up_proj.weight": rand(inter, h),
                p + "mlp.down_proj.weight": rand(h, inter), p + "input_layernorm.weight": torch.ones(h, dtype=dtype),
                p + "post_attention_layernorm.weight": torch.ones(h, dtype=dtype)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="baichuan2-7b")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", type=Path, help="folder of saved tokenizer files (default: SmolLM2's)")
    args = parser.parse_args()
    shape, dtype = SHAPES[args.shape], getattr(torch, args.dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(tensors_of(shape, dtype, args.device, args.seed), str(args.out / "model.safetensors"),
              metadata={"format": "pt"})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "rms_norm_eps": 1e-6,
              "rope_theta": shape.get("rope_theta", 10000.0), "tie_word_embeddings": False, "torch_dtype": args.dtype, "bos_token_id": 1,
              "eos_token_id": 2, "hidden_act": "silu", **shape}
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    if args.tokenizer is not None:
        for file in args.tokenizer.iterdir():
            shutil.copy(file, args.out / file.name)
    else:
        from engine.loader import open_checkpoint
        from engine.tokenizer import load_tokenizer

        load_tokenizer(open_checkpoint("smollm2-135m")).save_pretrained(str(args.out))
    print(f"wrote {args.shape} ({args.dtype}) to {args.out}")


if __name__ == "__main__":
    main()

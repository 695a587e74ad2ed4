"""What a quantized engine is: one frozen QuantizationConfig, written by the builder into the engine's
config.json ("quantization_config") and manifest, read back by the loader. Never guessed from file names."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from engine.errors import InvalidParameterError

# scheme -> the weight format its linear layers store (AWQ and GPTQ differ in how the int4 weights are
# chosen, not in how they are stored or multiplied).
WEIGHT_FORMATS = {"int8_wo": "int8_wo", "int4_wo": "int4", "awq": "int4", "gptq": "int4",
                  "smoothquant": "w8a8", "fp8": "fp8"}
SCHEMES = tuple(WEIGHT_FORMATS)
CALIBRATED = ("awq", "gptq", "smoothquant")  # schemes that look at activations
FP8_GRANULARITIES = ("tensor", "channel")
# fp8 activation scales: "token", one per token computed at run time (dynamic); "tensor", one per layer
# input calibrated by the builder (static, TensorRT-LLM's fp8 recipe: cuBLASLt's tensor-wise fp8 GEMM).
FP8_ACTIVATIONS = ("token", "tensor")


@dataclass(frozen=True)
class QuantizationConfig:
    scheme: str
    group_size: int = 128  # int4 formats: input channels sharing one scale and zero point
    lm_head: bool = False  # quantize the output projection too
    # Store the token embedding as int8 rows (engine/layers/embedding.py), whatever the scheme. Where the
    # checkpoint ties the lm_head to it, the builder asks for lm_head too (the head then has its own copy).
    embedding: bool = False
    alpha: float = 0.5  # smoothquant: migration strength, 0 (all on activations) .. 1 (all on weights)
    act_order: bool = True  # gptq: quantize columns in order of decreasing Hessian diagonal (static groups)
    fp8_granularity: str = "channel"  # fp8 weights: one scale per tensor or per output channel
    fp8_activations: str = "token"  # fp8 activations: FP8_ACTIVATIONS
    calibration: str = ""  # fingerprint of the calibration data and settings ("" when uncalibrated)

    def __post_init__(self) -> None:
        def check(ok: bool, field: str, problem: str) -> None:
            if not ok:
                raise InvalidParameterError(field, problem)

        check(self.scheme in SCHEMES, "quantization", f"unknown scheme {self.scheme!r}; one of {', '.join(SCHEMES)}")
        check(self.group_size >= 32 and self.group_size % 32 == 0, "group_size",
              f"must be a positive multiple of 32, got {self.group_size}")
        check(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        check(self.fp8_granularity in FP8_GRANULARITIES, "fp8_granularity",
              f"must be one of {FP8_GRANULARITIES}, got {self.fp8_granularity!r}")
        check(self.fp8_activations in FP8_ACTIVATIONS, "fp8_activations",
              f"must be one of {FP8_ACTIVATIONS}, got {self.fp8_activations!r}")
        # A tensor-wise GEMM scales its whole output by one number: the weights need one scale too.
        check(not self.static_fp8_inputs or self.fp8_granularity == "tensor", "fp8_activations",
              f"'tensor' (static activation scales) needs fp8_granularity 'tensor', got {self.fp8_granularity!r}")

    @property
    def static_fp8_inputs(self) -> bool:
        """fp8 linears take one calibrated scale per input (quantization/fp8.py)."""
        return self.scheme == "fp8" and self.fp8_activations == "tensor"

    @property
    def calibrated(self) -> bool:
        """The builder runs calibration samples through the model to quantize it."""
        return self.scheme in CALIBRATED or self.static_fp8_inputs

    @property
    def weight_format(self) -> str:
        return WEIGHT_FORMATS[self.scheme]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> QuantizationConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

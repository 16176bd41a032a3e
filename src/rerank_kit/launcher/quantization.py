"""``--quantization``: what the recipe tolerates, what the device and the installed vLLM can run, and the flag.

A method is rerank-kit's name (``QUANTIZATION_METHODS``, below); the recipe lists the ones its family
tolerates. This module refuses, with a ConfigError that says what to change, a method the device or the
installed vLLM cannot run or the checkpoint contradicts, and spells the rest as that vLLM wants it.

    >>> from rerank_kit.recipes import get_recipe
    >>> from rerank_kit.launcher.vllm import VllmFeatures
    >>> recipe = get_recipe("Qwen/Qwen3-Reranker-4B")
    >>> quantization_args(recipe, "fp8", features=VllmFeatures.for_version("0.32.0"), gpu=True)
    ['--quantization', 'fp8_per_tensor']
    >>> quantization_args(recipe, "fp8", features=VllmFeatures.for_version("0.19.1"), gpu=True)
    ['--quantization', 'fp8']
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from types import MappingProxyType

from rerank_kit.errors import ConfigError
from rerank_kit.launcher.vllm import VllmFeatures
from rerank_kit.recipes import Recipe

# What vLLM's CPU backend runs (vLLM 0.32 source; docs/quantization in the research notes):
# - compressed-tensors: INT8 W8A8 through oneDNN at any dtype (in the AVX2 and the AVX-512 kernel
#   libraries), FP8 W8A8 through torch._scaled_mm; its W4A16 needs the AVX-512 library, like awq/gptq.
# - fp8: FP8 made while loading, through torch._scaled_mm (VllmFeatures.cpu_fp8), 16-bit activations.
# - awq, gptq: the CPU W4A16 GEMM (cpu_gemm_wna16) exists only in the AVX-512 kernel libraries
#   (vllm/_C.abi3.so, _C_AVX512.abi3.so; vllm/_C_AVX2.abi3.so has none), 16-bit activations.
# - bitsandbytes: CUDA only (vLLM's supported-hardware table), and gone from vLLM 0.28.
CPU_METHODS = ("compressed-tensors", "fp8", "awq", "gptq")
AVX512_ONLY_ON_CPU = frozenset({"awq", "gptq"})
# vLLM refuses float32 activations for these (get_supported_act_dtypes: float16/bfloat16 only).
SIXTEEN_BIT_ONLY = frozenset({"fp8", "awq", "gptq"})
FLOAT32_NAMES = frozenset({"float32", "float", "fp32"})

# What `--quantization` may ask for, in rerank-kit's words: a recipe lists the ones its family tolerates;
# this module refuses what the device or the installed vLLM cannot run, and spells the rest for that vLLM.
QUANTIZATION_METHODS: Mapping[str, str] = MappingProxyType(
    {
        "fp8": "FP8 weights and activations, made by vLLM while it loads an unquantized checkpoint "
        "(or an FP8 checkpoint read as saved); 16-bit activations only",
        "bitsandbytes": "bitsandbytes (vLLM < 0.28, CUDA): 4-bit NF4 made while loading, or an 8-bit "
        "(load_in_8bit) checkpoint read as saved",
        "compressed-tensors": "a checkpoint quantized ahead by llm-compressor / compressed-tensors "
        "(INT8 W8A8 runs on the CPU backend at float32)",
        "awq": "a 4-bit AWQ checkpoint",
        "gptq": "a 4-bit GPTQ checkpoint",
    }
)
# The methods that only read a checkpoint quantized ahead: its config.json says which one.
PREQUANTIZED_METHODS = frozenset({"compressed-tensors", "awq", "gptq"})


def checkpoint_method(model_path: str) -> str | None:
    """The quantization a local checkpoint was saved with (config.json's quant_method), or None.

    None too for a hub id or a directory without config.json: nothing to read here.
    """
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    # compressed-tensors checkpoints of some releases keep it under compression_config.
    quant = config.get("quantization_config") or config.get("compression_config")
    if not isinstance(quant, dict):
        return None
    method = quant.get("quant_method")
    return str(method) if method else None


def _listing(methods: Collection[str]) -> str:
    return ", ".join(methods) if methods else "none"


def quantization_args(
    recipe: Recipe,
    method: str | None,
    *,
    features: VllmFeatures,
    gpu: bool,
    model_path: str | None = None,
    dtype: str | None = None,
    cpu_flags: frozenset[str] | None = None,
) -> list[str]:
    """The vLLM flags that serve ``recipe`` with ``method`` (``[]`` for None), or ConfigError saying what to change.

    ``model_path`` is what vLLM loads (a local directory is read for the method it was saved with),
    ``dtype`` the --dtype vLLM gets (None: the model's own), ``cpu_flags`` the host's (None: unknown).
    """
    if method is None:
        return []
    what = f"{recipe.model_id or 'this model'} ({recipe.family})"
    if method not in QUANTIZATION_METHODS:
        raise ConfigError(
            f"unknown --quantization {method!r}: use one of {_listing(recipe.quantization)} for {what} "
            f"(rerank-kit's methods: {', '.join(QUANTIZATION_METHODS)})"
        )
    if method not in recipe.quantization:
        raise ConfigError(
            f"{what} cannot be served with --quantization {method}: its family allows "
            f"{_listing(recipe.quantization)}. Pick one of those or drop --quantization"
        )
    if not gpu:
        on_cpu = [m for m in recipe.quantization if m in CPU_METHODS and (m != "fp8" or features.cpu_fp8)]
        if method not in on_cpu:
            raise ConfigError(
                f"--quantization {method} does not run on vLLM {features.version}'s CPU backend: for {what} "
                f"use {_listing(on_cpu)} there, or serve on a CUDA GPU (--device cuda)"
            )
        if method in AVX512_ONLY_ON_CPU and cpu_flags is not None and "avx512f" not in cpu_flags:
            raise ConfigError(
                f"--quantization {method} on the CPU backend needs AVX-512 (vLLM's AVX2 kernels have no 4-bit "
                "GEMM); on this CPU use a compressed-tensors INT8 W8A8 checkpoint (--quantization compressed-tensors)"
            )
    if method == "bitsandbytes" and not features.bitsandbytes:
        raise ConfigError(
            f"vLLM {features.version} has no bitsandbytes (removed in 0.28): use --quantization fp8 on a GPU "
            "or a checkpoint quantized ahead (compressed-tensors, awq, gptq), or install vllm<0.28"
        )

    saved = checkpoint_method(model_path) if model_path else None
    local = model_path is not None and Path(model_path).is_dir()
    if saved is not None and saved != method:
        raise ConfigError(
            f"{model_path} was saved quantized with {saved!r}, not {method}: drop --quantization "
            f"(vLLM reads {saved!r} from its config.json) or serve an unquantized checkpoint"
        )
    if method in PREQUANTIZED_METHODS and local and saved is None:
        raise ConfigError(
            f"--quantization {method} reads a checkpoint quantized ahead, and {model_path}/config.json has no "
            f"quantization_config: quantize it first (e.g. `python bench/quantization.py quantize "
            f"{model_path} OUT` writes an INT8 W8A8 compressed-tensors copy) or drop --quantization"
        )
    if method in SIXTEEN_BIT_ONLY and dtype is not None and dtype.lower() in FLOAT32_NAMES:
        raise ConfigError(
            f"--quantization {method} needs 16-bit activations and the server would run at {dtype}: pass "
            "--dtype bfloat16 (or float16), or use a compressed-tensors INT8 W8A8 checkpoint, which runs at float32"
        )
    # An FP8 checkpoint is read as saved ("fp8"); an unquantized one is quantized under the online name.
    flag = features.online_fp8 if method == "fp8" and saved is None else method
    return ["--quantization", flag]

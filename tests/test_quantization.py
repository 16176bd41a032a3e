"""--quantization: the recipe's allowed methods, the device and vLLM version rules, the flag vLLM gets, the CLI,
the INT8 checkpoint writer and the agreement measures of bench/quantization.py."""

from __future__ import annotations

import json
import math
import random
import shlex
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rerank_kit import launcher
from rerank_kit.cli import app
from rerank_kit.errors import ConfigError
from rerank_kit.launcher import ServeOptions, build_command
from rerank_kit.launcher.machine import Machine
from rerank_kit.launcher.quantization import QUANTIZATION_METHODS, checkpoint_method, quantization_args
from rerank_kit.recipes import FAMILIES, RECIPES, get_recipe

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import quantization as qbench  # noqa: E402  (bench/quantization.py)

GiB = 1 << 30
AVX2_CPU = Machine(cpu_count=2, cpu_flags=frozenset({"avx2"}), total_memory=24 * GiB, available_memory=20 * GiB, gpus=0)
AVX512_BF16_CPU = Machine(
    cpu_count=32,
    cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
    total_memory=256 * GiB,
    available_memory=200 * GiB,
    gpus=0,
)
GPU_BOX = Machine(cpu_count=16, cpu_flags=frozenset({"avx2"}), total_memory=64 * GiB, available_memory=60 * GiB, gpus=1)
QWEN = "Qwen/Qwen3-Reranker-4B"
BGE = "BAAI/bge-reranker-base"
runner = CliRunner()


def argv_quantization(command) -> str | None:
    args = list(command.server_args)
    return args[args.index("--quantization") + 1] if "--quantization" in args else None


def build(model: str, version: str, machine: Machine, **options) -> launcher.Command:
    recipe = get_recipe(model, options.pop("family", None))
    return build_command(recipe, ServeOptions(**options), vllm_version=version, machine=machine)


def saved_checkpoint(path: Path, quant_method: str | None) -> Path:
    """A model directory whose config.json says how it was quantized (None: not at all)."""
    path.mkdir(parents=True, exist_ok=True)
    config: dict = {"architectures": ["BertForSequenceClassification"], "model_type": "bert"}
    if quant_method:
        config["quantization_config"] = {"quant_method": quant_method}
    (path / "config.json").write_text(json.dumps(config))
    return path


# --- the recipe table --------------------------------------------------------------------------------------


def test_every_family_allows_only_known_methods():
    for name, recipe in FAMILIES.items():
        assert recipe.quantization, name
        assert set(recipe.quantization) <= set(QUANTIZATION_METHODS), name
    # Decoders take every method; encoders none of the decoder-only tools.
    assert "bitsandbytes" in get_recipe(QWEN).quantization
    assert {"bitsandbytes", "awq", "gptq"}.isdisjoint(get_recipe(BGE).quantization)
    assert RECIPES["sentence-transformers/all-MiniLM-L6-v2"].quantization == ("fp8", "compressed-tensors")
    assert json.loads(json.dumps(get_recipe(QWEN).as_dict()))["quantization"] == list(get_recipe(QWEN).quantization)


# --- the flag per family, device and vLLM release ----------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "expected"),
    [("0.11.0", "fp8"), ("0.19.1", "fp8"), ("0.20.0", "fp8_per_tensor"), ("0.32.0", "fp8_per_tensor")],
)
def test_fp8_on_a_gpu_is_spelled_for_the_installed_vllm(version, expected):
    for model in (QWEN, BGE, "mixedbread-ai/mxbai-rerank-base-v2", "BAAI/bge-reranker-v2-gemma"):
        assert argv_quantization(build(model, version, GPU_BOX, quantization="fp8")) == expected


def test_no_quantization_adds_no_flag():
    assert argv_quantization(build(QWEN, "0.32.0", GPU_BOX)) is None
    assert (
        quantization_args(get_recipe(QWEN), None, features=launcher.VllmFeatures.for_version("0.32.0"), gpu=True) == []
    )


def test_bitsandbytes_until_vllm_0_28_on_a_gpu_for_decoders_only():
    assert argv_quantization(build(QWEN, "0.27.1", GPU_BOX, quantization="bitsandbytes")) == "bitsandbytes"
    with pytest.raises(ConfigError, match=r"no bitsandbytes \(removed in 0.28\)"):
        build(QWEN, "0.28.0", GPU_BOX, quantization="bitsandbytes")
    with pytest.raises(ConfigError, match="its family allows fp8, compressed-tensors"):
        build(BGE, "0.27.1", GPU_BOX, quantization="bitsandbytes")
    with pytest.raises(ConfigError, match=r"does not run on vLLM 0\.27\.1's CPU backend"):
        build(QWEN, "0.27.1", AVX512_BF16_CPU, quantization="bitsandbytes")


def test_a_method_the_family_does_not_tolerate_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        build(BGE, "0.32.0", GPU_BOX, quantization="awq")
    assert "BAAI/bge-reranker-base (bge-reranker) cannot be served with --quantization awq" in str(err.value)
    assert "allows fp8, compressed-tensors" in str(err.value)
    with pytest.raises(ConfigError, match="its family allows fp8\\. Pick one"):
        build("jinaai/jina-reranker-v2-base-multilingual", "0.32.0", GPU_BOX, quantization="compressed-tensors")
    with pytest.raises(ConfigError, match=r"unknown --quantization 'int3'.*rerank-kit's methods: fp8, bitsandbytes"):
        build(QWEN, "0.32.0", GPU_BOX, quantization="int3")


def test_fp8_on_the_cpu_needs_16_bit_activations_and_vllm_0_15():
    # This machine has no native bf16, so the launcher picks float32: fp8 is refused with what to pass.
    with pytest.raises(ConfigError, match="pass --dtype bfloat16"):
        build(BGE, "0.32.0", AVX2_CPU, quantization="fp8")
    assert argv_quantization(build(BGE, "0.32.0", AVX2_CPU, quantization="fp8", dtype="bfloat16")) == "fp8_per_tensor"
    # A bf16 machine gets bfloat16 by default, so fp8 passes with no --dtype.
    assert argv_quantization(build(BGE, "0.32.0", AVX512_BF16_CPU, quantization="fp8")) == "fp8_per_tensor"
    with pytest.raises(ConfigError, match="use compressed-tensors there"):
        build(BGE, "0.14.0", AVX2_CPU, quantization="fp8", dtype="bfloat16")


def test_awq_and_gptq_on_the_cpu_need_avx512():
    with pytest.raises(ConfigError, match="needs AVX-512"):
        build(QWEN, "0.32.0", AVX2_CPU, quantization="awq", dtype="bfloat16")
    assert argv_quantization(build(QWEN, "0.32.0", AVX512_BF16_CPU, quantization="gptq")) == "gptq"
    with pytest.raises(ConfigError, match="needs 16-bit activations"):
        build(QWEN, "0.32.0", AVX512_BF16_CPU, quantization="awq", dtype="float32")


def test_a_local_checkpoint_must_say_it_is_quantized(tmp_path):
    family = "ms-marco-cross-encoder"
    quantized = saved_checkpoint(tmp_path / "w8a8", "compressed-tensors")
    plain = saved_checkpoint(tmp_path / "plain", None)
    awq = saved_checkpoint(tmp_path / "awq", "awq")
    fp8 = saved_checkpoint(tmp_path / "fp8", "fp8")
    assert checkpoint_method(str(quantized)) == "compressed-tensors"
    assert checkpoint_method(str(plain)) is None
    assert checkpoint_method("some/hub-id") is None
    # The CPU path that runs at float32 on this kind of machine.
    command = build(str(quantized), "0.32.0", AVX2_CPU, family=family, quantization="compressed-tensors")
    assert argv_quantization(command) == "compressed-tensors"
    assert command.server_args[command.server_args.index("--dtype") + 1] == "float32"
    with pytest.raises(ConfigError, match="has no quantization_config: quantize it first"):
        build(str(plain), "0.32.0", AVX2_CPU, family=family, quantization="compressed-tensors")
    with pytest.raises(
        ConfigError, match="was saved quantized with 'awq', not compressed-tensors: drop --quantization"
    ):
        build(str(awq), "0.32.0", GPU_BOX, family="qwen3-reranker", quantization="compressed-tensors")
    # An FP8 checkpoint is read as saved: plain "fp8", which 0.31+ refuses for unquantized checkpoints only.
    assert argv_quantization(build(str(fp8), "0.32.0", GPU_BOX, family=family, quantization="fp8")) == "fp8"
    assert (
        argv_quantization(build(str(plain), "0.32.0", GPU_BOX, family=family, quantization="fp8")) == "fp8_per_tensor"
    )


def test_quantization_given_twice_is_refused():
    with pytest.raises(ConfigError, match="give it once"):
        ServeOptions(quantization="fp8", extra_args=("--quantization", "fp8"))
    with pytest.raises(ConfigError, match="give it once"):
        ServeOptions(quantization="fp8", extra_args=("-q", "fp8"))
    assert ServeOptions(extra_args=("--quantization", "fp8")).extra_args == ("--quantization", "fp8")


def test_the_installed_vllm_knows_each_spelling():
    pytest.importorskip("vllm")
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS as VLLM_METHODS
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    except ImportError:  # vLLM < 0.29
        from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
    parser, validate = make_arg_parser(FlexibleArgumentParser()), validate_parsed_serve_args

    version = launcher.vllm_version()
    features = launcher.VllmFeatures.for_version(version)
    assert features.online_fp8 in VLLM_METHODS
    for method in ("compressed-tensors", "awq", "gptq", "fp8"):
        assert method in VLLM_METHODS
    assert ("bitsandbytes" in VLLM_METHODS) == features.bitsandbytes
    command = build(BGE, version, GPU_BOX, quantization="fp8", eager=True)
    args = parser.parse_args(list(command.server_args))
    validate(args)
    assert args.quantization == features.online_fp8


# --- the CLI -----------------------------------------------------------------------------------------------


def test_cli_option_reaches_the_printed_command(tmp_path):
    expected = launcher.VllmFeatures.for_version(launcher.vllm_version()).online_fp8
    result = runner.invoke(app, ["cmd", QWEN, "--device", "cuda", "--quantization", "fp8"])
    assert result.exit_code == 0, result.output
    argv = shlex.split(result.stdout.strip().splitlines()[-1])
    assert argv[argv.index("--quantization") + 1] == expected

    quantized = saved_checkpoint(tmp_path / "w8a8", "compressed-tensors")
    args = ["cmd", str(quantized), "--family", "ms-marco-cross-encoder", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--quantization", "compressed-tensors"])
    assert result.exit_code == 0, result.output
    argv = shlex.split(result.stdout.strip().splitlines()[-1])
    assert argv[argv.index("--quantization") + 1] == "compressed-tensors"


def test_cli_refuses_a_method_with_one_line_saying_what_to_change():
    result = runner.invoke(app, ["cmd", BGE, "--device", "cuda", "--quantization", "bitsandbytes"])
    assert result.exit_code == 2, result.output
    assert "allows fp8, compressed-tensors" in result.stderr
    assert "Traceback" not in result.output


# --- the INT8 W8A8 checkpoint writer -----------------------------------------------------------------------


def test_quantize_writes_a_compressed_tensors_checkpoint_vllm_reads(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("compressed_tensors")
    from safetensors.torch import load_file

    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=1
    )
    config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(0)
    source = tmp_path / "source"
    transformers.BertForSequenceClassification(config).save_pretrained(source)
    (source / "vocab.txt").write_text("[PAD]\n")
    original = load_file(source / "model.safetensors")

    out = qbench.quantize_int8(source, tmp_path / "w8a8", say=lambda _: None)
    weights = load_file(out / "model.safetensors")
    assert (out / "vocab.txt").exists()
    assert checkpoint_method(str(out)) == "compressed-tensors"
    name = "bert.encoder.layer.0.attention.self.query"
    assert weights[f"{name}.weight"].dtype == torch.int8
    scale = weights[f"{name}.weight_scale"]
    # Symmetric per-channel: every weight within half a step of its int8 value times the channel's scale.
    error = (weights[f"{name}.weight"].float() * scale - original[f"{name}.weight"]).abs()
    assert bool((error <= scale / 2 + 1e-7).all())
    # The heads vLLM builds as plain nn.Linear stay in full precision.
    assert weights["classifier.weight"].dtype == torch.float32
    assert weights["bert.pooler.dense.weight"].dtype == torch.float32
    with pytest.raises(SystemExit, match="already quantized"):
        qbench.quantize_int8(out, tmp_path / "again", say=lambda _: None)

    pytest.importorskip("vllm")
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
        CompressedTensorsConfig,
    )

    parsed = CompressedTensorsConfig.from_config(json.loads((out / "config.json").read_text())["quantization_config"])
    parsed.packed_modules_mapping = {"qkv_proj": ["query", "key", "value"]}
    qkv = type("QKVParallelLinear", (torch.nn.Module,), {})()
    scheme = parsed.get_scheme(layer=qkv, layer_name="bert.encoder.layer.0.attention.self.qkv_proj")
    # vLLM's INT8 W8A8 with activations quantized per token at run time: oneDNN on the CPU backend.
    assert type(scheme).__name__ == "CompressedTensorsW8A8Int8"
    assert scheme.is_static_input_scheme is False
    assert torch.float32 in parsed.get_supported_act_dtypes()


# --- agreement measures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [qbench.kendall_tau_b, qbench._kendall_tau_b], ids=["public", "no-scipy"])
def test_kendall_tau_b_by_hand(tau):
    assert tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # One discordant pair of six: (5 - 1) / 6.
    assert tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # x ties items 0 and 1 (y does not): 2 concordant, 0 discordant, sqrt((2 + 0) * (2 + 1)) = sqrt(6).
    assert tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    # A pair tied in both lists counts in neither: only the two pairs with item 2 remain, both concordant.
    assert tau([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)
    assert math.isnan(tau([3, 3, 3], [1, 2, 3]))


def test_kendall_tau_b_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(7)
    for n in (5, 30, 100):
        x = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(n)]
        y = [rng.random() if rng.random() < 0.7 else 0.5 for _ in range(n)]
        assert qbench._kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)
    with pytest.raises(ValueError, match="differ in length"):
        qbench.kendall_tau_b([1, 2], [1, 2, 3])


def test_top_k_overlap_by_hand():
    assert qbench.top_k_overlap([0.9, 0.8, 0.1, 0.2], [0.9, 0.8, 0.1, 0.2], k=2) == 1.0
    assert qbench.top_k_overlap([0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.9, 0.8], k=2) == 0.0
    assert qbench.top_k_overlap([0.9, 0.8, 0.1, 0.2], [0.1, 0.8, 0.9, 0.2], k=2) == 0.5
    # k beyond the list: every item is in both "top k".
    assert qbench.top_k_overlap([1, 2, 3], [3, 2, 1], k=10) == 1.0
    # Equal scores keep their original order: the top 1 of [5, 5, 1] is item 0, of [1, 5, 5] item 1.
    assert qbench.top_k_overlap([5, 5, 1], [1, 5, 5], k=1) == 0.0


def test_ndcg_at_10_by_hand():
    judged = {"a": 1, "b": 2}
    # Ranked a, b, c: DCG = 1/log2(2) + 2/log2(3); ideal b, a: 2/log2(2) + 1/log2(3).
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert qbench.ndcg_at_k(judged, ["a", "b", "c"], [0.9, 0.5, 0.1]) == pytest.approx(expected)
    assert qbench.ndcg_at_k(judged, ["a", "b", "c"], [0.5, 0.9, 0.1]) == pytest.approx(1.0)
    # A judged passage the first stage never retrieved still counts in the ideal.
    assert qbench.ndcg_at_k({"z": 3}, ["a", "b"], [0.9, 0.5]) == 0.0
    assert qbench.ndcg_at_k({}, ["a"], [1.0]) == 0.0
    # Ties in score: trec_eval orders by document id, descending ("b" before "a").
    assert qbench.ndcg_at_k({"a": 1}, ["a", "b"], [0.5, 0.5]) == pytest.approx(1 / math.log2(3))


def test_ndcg_at_10_matches_beir_evaluator():
    pytest.importorskip("beir")
    from rerank_kit.bench.metrics import retrieval_metrics

    rng = random.Random(3)
    qrels, runs, mine = {}, {}, []
    for q in range(5):
        ids = [f"d{q}-{i}" for i in range(40)]
        scores = rng.sample(range(1000), 40)  # distinct: no tie-break differences
        qrels[f"q{q}"] = {d: rng.choice([0, 1, 2, 3]) for d in rng.sample(ids, 15)} | {f"unretrieved{q}": 2}
        runs[f"q{q}"] = dict(zip(ids, [float(s) for s in scores], strict=True))
        mine.append(qbench.ndcg_at_k(qrels[f"q{q}"], ids, scores))
    assert sum(mine) / len(mine) == pytest.approx(retrieval_metrics(qrels, runs)["ndcg@10"], abs=1e-4)


def test_agreement_per_query_and_mean():
    from rerank_kit.bench.workloads import Case

    cases = [
        Case(query="q1", documents=["a", "b", "c"], qid="1", doc_ids=["a", "b", "c"]),
        Case(query="q2", documents=["x", "y"], qid="2", doc_ids=["x", "y"]),
    ]
    qrels = {"1": {"a": 1, "b": 2}}
    base = [[0.5, 0.9, 0.1], [0.7, 0.7]]
    quant = [[0.9, 0.5, 0.1], [0.2, 0.3]]
    result = qbench.agreement(cases, qrels, base, quant)
    first, second = result["per_query"]
    assert first["kendall_tau_b"] == pytest.approx(1 / 3)  # 2 concordant, 1 discordant pair
    assert first["top10_overlap"] == 1.0
    assert first["ndcg@10_base"] == pytest.approx(1.0)
    assert first["ndcg@10_quantized"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert math.isnan(second["kendall_tau_b"]) and "ndcg@10_base" not in second
    summary = result["summary"]
    assert summary["kendall_tau_b"]["mean"] == pytest.approx(1 / 3)
    assert summary["kendall_tau_b"]["undefined"] == 1
    assert summary["ndcg@10"]["judged_queries"] == 1
    assert summary["ndcg@10"]["delta"] == pytest.approx(first["ndcg@10_quantized"] - 1.0)
    with pytest.raises(ValueError, match="2 cases, 1 base"):
        qbench.agreement(cases, qrels, base[:1], quant)


def test_compare_skips_cleanly_without_the_data(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = qbench.main(["compare", "--dataset", str(tmp_path / "missing"), "--launch", BGE, "--out", str(out)])
    assert code == 0
    assert "skipped: the DL19 data is not at" in capsys.readouterr().err
    assert not out.exists()

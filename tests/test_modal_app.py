"""modal_app.py, checked offline (no Modal account, no network): GPU, volumes, timeouts, autoscaling,
proxy auth, and a vLLM command identical to `rerank-kit cmd` for the same model."""

from __future__ import annotations

import importlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("modal")


def load(monkeypatch, **env):
    for name in ("MODEL_ID", "GPU_TYPE", "GPU_COUNT", "FAST_BOOT", "HF_SECRET", "MAX_CONTAINERS", "TARGET_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("modal_app", None)
    return importlib.import_module("modal_app")


def cli_cmd(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "rerank_kit.cli", "cmd", *args], capture_output=True, text=True, timeout=120, check=True
    ).stdout.strip()
    return shlex.split(out)


def test_server_settings(monkeypatch):
    modal_app = load(monkeypatch)
    info = modal_app.Reranker.info()
    assert info.gpus == [("L4", 1)]
    assert info.port == 8000
    assert info.unauthenticated is False  # Modal proxy auth stays on
    assert info.startup_timeout == 15 * 60
    assert set(info.volumes) == {"/root/.cache/huggingface", "/root/.cache/vllm"}
    assert info.volumes["/root/.cache/huggingface"].name == "rerank-kit-hf-cache"
    assert modal_app.AUTOSCALING == {
        "target_concurrency": 32,
        "min_containers": 0,
        "max_containers": 4,
        "buffer_containers": 0,
        "scaledown_window": 300,
    }


def test_deploy_time_environment(monkeypatch):
    modal_app = load(
        monkeypatch,
        MODEL_ID="Qwen/Qwen3-Reranker-4B",
        GPU_TYPE="H100",
        GPU_COUNT="2",
        FAST_BOOT="0",
        MAX_CONTAINERS="10",
    )
    assert modal_app.Reranker.info().gpus == [("H100", 2)]
    argv = modal_app.vllm_command().argv
    assert "--enforce-eager" not in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert modal_app.AUTOSCALING["max_containers"] == 10


@pytest.mark.parametrize(
    ("model", "fast_boot"),
    [("mixedbread-ai/mxbai-rerank-base-v2", "1"), ("Qwen/Qwen3-Reranker-0.6B", "0"), ("BAAI/bge-reranker-v2-m3", "1")],
)
def test_modal_runs_exactly_what_rerank_kit_cmd_prints(monkeypatch, model, fast_boot):
    modal_app = load(monkeypatch, MODEL_ID=model, FAST_BOOT=fast_boot)
    command = modal_app.vllm_command()
    args = [model, "--device", "cuda", "--host", "0.0.0.0", "--port", "8000", "--insecure"]
    if fast_boot == "1":
        args.append("--eager")
    printed = cli_cmd(*args)
    env_prefix = [p for p in printed if "=" in p and not p.startswith("-") and p.split("=")[0].isupper()]
    argv = printed[len(env_prefix) :]
    assert argv[1:] == command.argv[1:]  # everything after the interpreter's path
    assert dict(p.split("=", 1) for p in env_prefix) == command.env


def test_image_installs_pinned_vllm_and_rerank_kit(monkeypatch):
    load(monkeypatch)
    source = (ROOT / "modal_app.py").read_text()
    assert "VLLM_VERSION = launcher.DEFAULT_VLLM_VERSION" in source  # the one pin, rerank-kit's
    assert 'uv_pip_install(f"vllm=={VLLM_VERSION}"' in source
    assert "pip install /opt/rerank-kit" in source  # an installed distribution: vLLM finds the plugin
    assert ".run_function(download_weights" in source

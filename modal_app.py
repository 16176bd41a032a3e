# ---
# cmd: ["modal", "deploy", "modal_app.py"]
# ---

# # Serve a cross-encoder reranker on Modal with vLLM, configured by rerank-kit
#
# This file deploys one reranker (mxbai-rerank-base-v2 unless you pick another) as an autoscaled,
# authenticated HTTPS endpoint with vLLM's `/v1/rerank` and `/v1/score` APIs:
#
#     modal deploy modal_app.py                                  # deploy
#     MODEL_ID=Qwen/Qwen3-Reranker-4B GPU_TYPE=L40S modal deploy modal_app.py
#     modal run modal_app.py                                     # start, wait for /health, rerank once
#
# Every vLLM flag comes from `rerank_kit.recipes` through `rerank_kit.launcher`: the command this
# container runs is exactly what `rerank-kit cmd MODEL_ID --device cuda --host 0.0.0.0 --insecure`
# prints (tests/test_modal_app.py fails if the two drift apart). The default model and the vLLM
# release are rerank-kit's too, so this file never restates them.

import os
import subprocess
import time
from pathlib import Path

import modal

from rerank_kit import launcher
from rerank_kit.recipes import default_model, get_recipe

# ## Deploy-time settings
#
# Read from the environment of `modal deploy`, so one file serves every recipe.
# `FAST_BOOT=1` skips torch.compile (cold start in ~1 minute instead of ~3); `FAST_BOOT=0` compiles
# for throughput, which pays off when containers stay up.

MODEL_ID = os.environ.get("MODEL_ID", default_model(has_gpu=True))
GPU_TYPE = os.environ.get("GPU_TYPE", "L4")
GPU_COUNT = int(os.environ.get("GPU_COUNT", "1"))
FAST_BOOT = os.environ.get("FAST_BOOT", "1") == "1"
# Name of a Modal Secret holding HF_TOKEN, for gated models (optional).
HF_SECRET = os.environ.get("HF_SECRET")

# The release rerank-kit builds commands for (and tests against); the image pins it below.
VLLM_VERSION = launcher.DEFAULT_VLLM_VERSION
PORT = 8000
MINUTES = 60

RECIPE = get_recipe(MODEL_ID)

# ## Autoscaling
#
# A reranker request is one forward pass over (query, document) pairs, and vLLM batches concurrent
# requests, so one GPU absorbs many requests in flight. Modal adds a container when the average
# in-flight requests per container pass `target_concurrency`; idle containers wait
# `scaledown_window` before stopping, because a cold start (image pull, weight load, warm-up)
# costs about a minute.

AUTOSCALING = {
    "target_concurrency": int(os.environ.get("TARGET_CONCURRENCY", "32")),
    "min_containers": int(os.environ.get("MIN_CONTAINERS", "0")),
    "max_containers": int(os.environ.get("MAX_CONTAINERS", "4")),
    "buffer_containers": int(os.environ.get("BUFFER_CONTAINERS", "0")),
    "scaledown_window": int(os.environ.get("SCALEDOWN_WINDOW", str(5 * MINUTES))),
}
STARTUP_TIMEOUT = 15 * MINUTES  # a first start downloads nothing (weights are in the volume) but compiles


def vllm_command() -> launcher.Command:
    """The server command, built by rerank-kit from the recipe (never written by hand here)."""
    options = launcher.ServeOptions(
        host="0.0.0.0",  # noqa: S104 - inside the container; Modal's proxy is the only way in
        port=PORT,
        device="cuda",
        eager=FAST_BOOT,
        tensor_parallel_size=GPU_COUNT,
        # Modal's proxy authenticates every request (Modal-Key / Modal-Secret headers) before it
        # reaches the container, so vLLM itself runs without a key.
        insecure=True,
    )
    return launcher.build_command(RECIPE, options, vllm_version=VLLM_VERSION, machine=None, python="python")


# ## The image
#
# CUDA vLLM at a pinned version, plus rerank-kit itself, installed as a package so that vLLM finds
# its plugin (piecewise score prompts) through the `vllm.general_plugins` entry point.

HF_CACHE = "/root/.cache/huggingface"
VLLM_CACHE = "/root/.cache/vllm"
hf_cache_vol = modal.Volume.from_name("rerank-kit-hf-cache", create_if_missing=True)
vllm_cache_vol = modal.Volume.from_name("rerank-kit-vllm-cache", create_if_missing=True)
secrets = [modal.Secret.from_name(HF_SECRET, required_keys=["HF_TOKEN"])] if HF_SECRET else []

PROJECT = Path(__file__).parent


def download_weights() -> None:
    """Runs at image build time: weights land in the volume, so no cold start downloads them."""
    from huggingface_hub import snapshot_download

    snapshot_download(MODEL_ID, ignore_patterns=["*.pt", "*.bin", "*.onnx", "onnx/*", "*.gguf"])
    hf_cache_vol.commit()


image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(f"vllm=={VLLM_VERSION}", "huggingface_hub[hf_xet]")
    .env({"HF_XET_HIGH_PERFORMANCE": "1", "VLLM_NO_USAGE_STATS": "1"})
    .add_local_dir(PROJECT, "/opt/rerank-kit", copy=True, ignore=[".venv*", ".git", "bench/out", "**/__pycache__"])
    .run_commands("pip install /opt/rerank-kit")
    .env({"MODEL_ID": MODEL_ID, "GPU_COUNT": str(GPU_COUNT), "FAST_BOOT": "1" if FAST_BOOT else "0"})
    .run_function(download_weights, volumes={HF_CACHE: hf_cache_vol}, secrets=secrets)
)

app = modal.App(f"rerank-kit-{MODEL_ID.split('/')[-1].lower()}")

# ## The server
#
# `@app.server` runs a long-lived HTTP process: Modal routes traffic to `PORT` once the container
# is up, and keeps proxy auth on (only requests with a Modal proxy-auth token get through).


@app.server(
    image=image,
    gpu=f"{GPU_TYPE}:{GPU_COUNT}",
    port=PORT,
    startup_timeout=STARTUP_TIMEOUT,
    volumes={HF_CACHE: hf_cache_vol, VLLM_CACHE: vllm_cache_vol},
    secrets=secrets,
    **AUTOSCALING,
)
class Reranker:
    @modal.enter()
    def start(self) -> None:
        command = vllm_command()
        print(command.shell(), flush=True)
        self.process = subprocess.Popen(command.argv, env=command.environ())
        launcher.wait_healthy(
            f"http://127.0.0.1:{PORT}", timeout=STARTUP_TIMEOUT, alive=lambda: self.process.poll() is None
        )

    @modal.exit()
    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# ## Try it
#
# `modal run modal_app.py` starts a container, waits for `/health` and sends one rerank request
# through rerank-kit's client. Proxy auth needs a token: create one in the Modal dashboard and set
# RERANK_KIT_MODAL_KEY and RERANK_KIT_MODAL_SECRET (the client sends them as Modal-Key/Modal-Secret).


@app.local_entrypoint()
def main(query: str = "Who wrote 'To Kill a Mockingbird'?") -> None:
    from rerank_kit import RerankClient

    url = Reranker.get_url()
    documents = [
        "'To Kill a Mockingbird' is a novel by Harper Lee, published in 1960.",
        "Herman Melville wrote 'Moby-Dick'.",
        "Harper Lee was born in Monroeville, Alabama, in 1926.",
    ]
    with RerankClient(url, timeout=STARTUP_TIMEOUT) as client:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not all(s.healthy for s in client.health(timeout=30)):
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not become healthy in {STARTUP_TIMEOUT} s")
            time.sleep(5)
        response = client.rerank(query, documents)
    print(f"{url} ({response.model}):")
    for result in response.results:
        print(f"  {result.relevance_score:.4f}  {documents[result.index]}")

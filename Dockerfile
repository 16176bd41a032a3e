# rerank-kit on the official vLLM image, for a CUDA box, with a read-only root filesystem:
#
#   docker build -t rerank-kit .
#   docker run --gpus all --ipc=host --read-only --tmpfs /tmp:exec,mode=1777 -p 8000:8000 \
#       -v rerank-cache:/home/rerank/.cache -v rerank-hf:/home/rerank/.cache/huggingface \
#       -e RERANK_KIT_API_KEY="$RERANK_KIT_API_KEY" rerank-kit mixedbread-ai/mxbai-rerank-base-v2
#
# (or `make vllm-up-docker`, which uses compose.yaml and keeps the key in a file).
# The container runs `rerank-kit serve`, so vLLM gets its flags from rerank-kit's recipes and
# rerank-kit's vLLM plugin and guard are installed next to it.
ARG VLLM_VERSION=v0.32.0
FROM vllm/vllm-openai:${VLLM_VERSION}

COPY pyproject.toml README.md /opt/rerank-kit/
COPY src /opt/rerank-kit/src
# vLLM and torch are already in the image; this adds rerank-kit and its small dependencies.
RUN python3 -m pip install --no-cache-dir /opt/rerank-kit \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin rerank \
    && mkdir -p /home/rerank/.cache/huggingface \
    && chown -R rerank:rerank /home/rerank/.cache

# The root filesystem may be read-only (--read-only, readOnlyRootFilesystem): every writer is pointed
# at /home/rerank/.cache (a volume: compile caches), its huggingface/ (a volume: weights) or /tmp (a tmpfs).
#   HF_HOME          the weights
#   VLLM_CACHE_ROOT  vLLM's torch.compile cache; vLLM puts inductor's and Triton's caches inside it
#   TRITON_HOME      Triton kernels compiled outside torch.compile (default ~/.triton)
#   CUDA_CACHE_PATH  the CUDA driver's JIT cache (default ~/.nv); FlashInfer and torch use ~/.cache already
#   RERANK_KIT_STATE_DIR  pid/log files of `rerank-kit up` (`serve` writes none)
# /tmp holds vLLM's IPC sockets and download locks and inductor's first cache directory; usage
# statistics are off, so vLLM never writes ~/.config/vllm.
ENV HF_HOME=/home/rerank/.cache/huggingface \
    VLLM_CACHE_ROOT=/home/rerank/.cache/vllm \
    TRITON_HOME=/home/rerank/.cache \
    CUDA_CACHE_PATH=/home/rerank/.cache/nv \
    RERANK_KIT_STATE_DIR=/tmp/rerank-kit \
    VLLM_NO_USAGE_STATS=1
VOLUME ["/home/rerank/.cache", "/home/rerank/.cache/huggingface"]
# Numeric, so Kubernetes can verify runAsNonRoot (1000 is the `rerank` user created above).
USER 1000:1000
WORKDIR /home/rerank
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# Binding 0.0.0.0 needs an API key: set RERANK_KIT_API_KEY or mount a file and pass --api-key-file.
ENTRYPOINT ["rerank-kit", "serve", "--host", "0.0.0.0", "--port", "8000", "--device", "cuda"]
CMD ["mixedbread-ai/mxbai-rerank-base-v2"]

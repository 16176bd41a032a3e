"""What the launcher, the server and the client agree on, written once: HTTP paths, environment names, the
server's input limits, the guard's import path, the piecewise marker and how vLLM versions compare.

Standard library only: the vLLM server process (``rerank_kit.server``), the client and the wheel checker
(run with ``python -S -I``) all import it.

    >>> Limits(max_documents=50, strict_length=True).to_env()
    {'RERANK_KIT_STRICT_LENGTH': '1', 'RERANK_KIT_MAX_DOCUMENTS': '50'}
    >>> bearer_headers("k")
    {'Authorization': 'Bearer k'}
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

# --- HTTP paths (vLLM's routes that rerank-kit calls, probes or routes) -------------------------------

HEALTH_PATH = "/health"
MODELS_PATH = "/v1/models"
RERANK_PATH = "/v1/rerank"
SCORE_PATH = "/v1/score"
VERSION_PATH = "/version"
# vLLM's rerank routes (vllm/entrypoints/pooling/scoring/api_router.py); they all take RerankRequest.
RERANK_PATHS = frozenset({"/rerank", RERANK_PATH, "/v2/rerank"})
# vLLM's score routes (the same file); they take ScoreRequest.
SCORE_PATHS = frozenset({"/score", SCORE_PATH})
# The response header of a server that scores long documents in windows (rerank_kit.server.chunking):
# "pairs=<pairs scored>; max=<max_chunks_per_doc applied>". Its absence tells a client that documents
# longer than the model's window were truncated.
CHUNKS_HEADER = "x-rerank-kit-chunks"

# --- environment names ------------------------------------------------------------------------------

# The bearer key: the client sends it, `serve`/`up` and the gateway take it when given no key file.
API_KEY_ENV = "RERANK_KIT_API_KEY"
# vLLM's own name for the key (its /v1 routes check it too): the launcher sets it, the guard reads it.
VLLM_API_KEY_ENV = "VLLM_API_KEY"
# The client's settings, read only when the argument is not given (rerank_kit.client._config documents each).
URL_ENV = "RERANK_KIT_URL"
MODEL_ENV = "RERANK_KIT_MODEL"
TIMEOUT_ENV = "RERANK_KIT_TIMEOUT"
DEADLINE_ENV = "RERANK_KIT_DEADLINE"
MODAL_KEY_ENV = "RERANK_KIT_MODAL_KEY"
MODAL_SECRET_ENV = "RERANK_KIT_MODAL_SECRET"  # noqa: S105 - a variable name, not a secret
# The key Caddy (the gateway) checks callers against; set only in the gateway process's environment.
GATEWAY_KEY_ENV = "RERANK_KIT_GATEWAY_KEY"
# Where the launcher keeps pid, log and state files (rerank_kit.launcher.daemon.state_dir).
STATE_DIR_ENV = "RERANK_KIT_STATE_DIR"
# The caddy binary the gateway runs (rerank_kit.launcher.gateway.find_caddy).
CADDY_ENV = "RERANK_KIT_CADDY"

# --- the server process -----------------------------------------------------------------------------

# What vLLM loads with --middleware. This path (a shim of rerank_kit.server.guard) is the stable one: it is
# in saved commands and bench results.
GUARD_MIDDLEWARE = "rerank_kit.guard.RerankKitGuard"
# The key rerank-kit's vLLM plugin looks for in the HF config (set through --hf-overrides): when true,
# the score template's pieces are tokenized one by one, as the model's reference implementation does.
PIECEWISE_KEY = "rerank_kit_piecewise"
# The plugin acts only in a server whose environment asks for it (the launcher sets it on every command it
# builds: serve, up, cmd, Modal, k8s, Docker); anywhere else (a plain `vllm serve` in the same environment) it
# does nothing. PLUGIN_ON: instruction checks, default truncation, per-request prompts, each where this vLLM's
# code is the code it was verified on. PLUGIN_PIECEWISE: the same, and the recipe's piecewise prompts are
# required: a server that cannot apply them refuses to start instead of scoring wrongly.
PLUGIN_ENV = "RERANK_KIT_PLUGIN"
PLUGIN_ON = "on"
PLUGIN_PIECEWISE = "piecewise"
# How vLLM's CPU engine core is started (rerank_kit.server.engine_start): ENGINE_FORK, the launcher's default for a
# one-worker CPU server with Intel OpenMP preloaded, forks it from the API server, which has imported vLLM already;
# unset or anything else leaves vLLM's CPU platform to spawn a fresh interpreter that imports it all again.
ENGINE_START_ENV = "RERANK_KIT_ENGINE_START"
ENGINE_FORK = "fork"

DEFAULT_MAX_DOCUMENTS = 1000
DEFAULT_MAX_DOCUMENT_CHARS = 200_000
DEFAULT_MAX_BODY_MB = 32
DEFAULT_MAX_BODY_BYTES = DEFAULT_MAX_BODY_MB << 20
# As many images as the client's default documents per request; 20 MB is a 20-megapixel JPEG.
DEFAULT_MAX_IMAGES = 100
DEFAULT_MAX_IMAGE_BYTES = 20 << 20
# Windows scored per long document unless a request says otherwise (server.chunking; bench/RESULTS.md section 10).
DEFAULT_MAX_CHUNKS_PER_DOC = 8
# Limits field -> the environment variable that carries it from the launcher to the server.
_LIMIT_ENV_NAMES = {
    "strict_length": "RERANK_KIT_STRICT_LENGTH",
    "max_documents": "RERANK_KIT_MAX_DOCUMENTS",
    "max_document_chars": "RERANK_KIT_MAX_DOCUMENT_CHARS",
    "max_body_bytes": "RERANK_KIT_MAX_BODY_BYTES",
    "max_in_flight": "RERANK_KIT_MAX_IN_FLIGHT",
    "max_chunks_per_doc": "RERANK_KIT_MAX_CHUNKS_PER_DOC",
    "chunk_overlap_percent": "RERANK_KIT_CHUNK_OVERLAP_PERCENT",
    "max_images": "RERANK_KIT_MAX_IMAGES",
    "max_image_bytes": "RERANK_KIT_MAX_IMAGE_BYTES",
    "max_images_per_text": "RERANK_KIT_MAX_IMAGES_PER_TEXT",
}


@dataclass(frozen=True)
class Limits:
    """The server's input settings: the launcher writes them with ``to_env()``, the guard and the vLLM
    plugin read them with ``from_env()``.

        >>> Limits.from_env({"RERANK_KIT_MAX_DOCUMENTS": "50"}) == Limits(max_documents=50)
        True
        >>> Limits(max_in_flight=0).to_env()
        {'RERANK_KIT_MAX_IN_FLIGHT': '0'}
    """

    max_documents: int = DEFAULT_MAX_DOCUMENTS
    max_document_chars: int = DEFAULT_MAX_DOCUMENT_CHARS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Reject query+document pairs longer than --max-model-len (vLLM's 400) instead of truncating them.
    strict_length: bool = False
    # Requests in flight per API server process before the guard answers 429; None or 0: unbounded.
    max_in_flight: int | None = None
    # Windows scored per long document when a request does not say (max_chunks_per_doc); 1: truncate.
    max_chunks_per_doc: int = DEFAULT_MAX_CHUNKS_PER_DOC
    # Percent of a window shared with the next one (server.chunking.OVERLAP_PERCENT; set only to measure others).
    chunk_overlap_percent: int = 12
    # Images in one request (all fields), and decoded bytes per image sent inline (a data: URL); vLLM fetches an
    # http(s) image with the same cap (the launcher sets VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB from it).
    max_images: int = DEFAULT_MAX_IMAGES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    # Images one query or one document may carry (the recipe's, for a model that reads one per side); 0: any.
    max_images_per_text: int = 0

    def to_env(self) -> dict[str, str]:
        """The environment variables that carry these settings; a default is left out (readers fall back to it)."""
        defaults = Limits()
        env = {}
        for name, variable in _LIMIT_ENV_NAMES.items():
            value = getattr(self, name)
            if value != getattr(defaults, name):
                env[variable] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """The settings in ``environ`` (default ``os.environ``); unset or empty variables keep the defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for setting in dataclasses.fields(cls):
            raw = env.get(_LIMIT_ENV_NAMES[setting.name], "").strip()
            if raw:
                flag = isinstance(setting.default, bool)
                values[setting.name] = raw.lower() in ("1", "true", "yes") if flag else int(raw)
        return cls(**values)  # type: ignore[arg-type]

    @staticmethod
    def env_name(setting: str) -> str:
        """The environment variable that carries ``setting`` (a field name), for code that prints it.

        >>> Limits.env_name("max_in_flight")
        'RERANK_KIT_MAX_IN_FLIGHT'
        """
        return _LIMIT_ENV_NAMES[setting]


# --- helpers every side uses ------------------------------------------------------------------------


def bearer_headers(api_key: str | None) -> dict[str, str]:
    """The Authorization header for ``api_key``; none without a key.

    >>> bearer_headers(None)
    {}
    """
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numeric parts of a version, to compare releases.

    >>> version_tuple("0.32.0+cpu")
    (0, 32, 0)
    """
    parts = []
    for piece in re.split(r"[.+-]", version):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)

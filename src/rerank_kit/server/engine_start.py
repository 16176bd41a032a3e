"""How vLLM's CPU engine core process starts: forked from the API server instead of spawned.

vLLM's CPU platform sets ``VLLM_WORKER_MULTIPROC_METHOD=spawn`` in ``CpuPlatform.check_and_update_config``, so its
engine core is a new interpreter that imports vLLM, torch and transformers a second time: about a third of a start
on a 2-core machine (bench/RESULTS.md section 11). On GPUs vLLM forks the engine core at the same point. With
``RERANK_KIT_ENGINE_START=fork`` (``_contract.ENGINE_START_ENV``; the launcher's default on a one-worker CPU
server, printed with its reason) the plugin restores fork after vLLM chose spawn. (It was an opt-in for a day, after
tests/test_gateway.py's switch lost two requests with it; the cause was Caddy closing kept-alive connections at
its reload, which the client now answers by sending such a request once more: errors.ConnectionClosedError.)

What a fork needs, each checked here; anything else keeps vLLM's spawn, said once at INFO:
- one process under the engine core: the uni-process executor (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so nothing
  forks again from the child;
- ``KMP_AFFINITY`` set wherever Intel OpenMP is loaded (the launcher preloads it): left unset, Intel OpenMP pins a
  process forked from one that loaded it to CPU 0 (measured: ``os.sched_getaffinity`` {0, 1} -> {0} in the child,
  ``KMP_AFFINITY=none`` keeps {0, 1}). Pinned, the new engine core shared one core with a busy server's bound
  OpenMP thread and took minutes to import (tests/test_gateway.py's switch);
- a platform body rerank-kit ran forked (compat row ``plugin.cpu_engine_start``: every release's body differs);
- the same settings a spawned engine core would start with: the platform sets environment variables for it, and
  a forked one has read some of them already (torch Inductor's config, at import). ``carry_over`` applies those
  (forked without it: 3-4 % fewer pairs/s, kernels built without vLLM's thread setting) and spawns where one
  only a new process reads is among them (LD_PRELOAD);
- no listening socket of the API server: vLLM binds the HTTP port before it starts the engine core (and listens
  on it after), so a forked one inherits it; ``release_listeners`` puts /dev/null in its place in the child.
  Left open, the port of an API server that died (kill -9) kept taking connections that nobody answered, and
  clients waited for their timeout instead of being refused at once (tests/test_faults.py's kill -9: 61 s).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
from typing import Any

from rerank_kit._contract import ENGINE_FORK, ENGINE_START_ENV

logger = logging.getLogger("vllm.rerank_kit")

FORK_MESSAGE = (
    "rerank-kit: vLLM's engine core is forked from the process that starts it, not spawned (no second import of "
    f"vLLM; {ENGINE_START_ENV}=spawn restores vLLM's own start)"
)
_STATE = {"forked": False, "said": False}


def intel_openmp_loaded() -> bool:
    """Whether this process has Intel OpenMP (libiomp5) mapped, e.g. through the launcher's LD_PRELOAD."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libiomp5" in line for line in maps)
    except OSError:  # not Linux: vLLM's CPU platform forks nothing there either way
        return False


def why_not_fork() -> str | None:
    """Why the engine core must be spawned here, or None where a fork is safe (the body is checked apart)."""
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        return f"{ENGINE_START_ENV}={ENGINE_FORK} needs the uni-process executor (VLLM_ENABLE_V1_MULTIPROCESSING=0)"
    if "KMP_AFFINITY" not in os.environ and intel_openmp_loaded():
        return ("Intel OpenMP is loaded and KMP_AFFINITY is unset: it would pin the forked engine core to CPU 0; "
                "set KMP_AFFINITY=none (the launcher does) to fork")  # fmt: skip
    return None


# What vLLM's CPU platform puts in the environment for the engine core it spawns, and how a forked one, which has
# imported everything already, gets the same: read when used (os.environ is inherited), or set on torch
# Inductor's config, which read its variables at import (in the API server, before the platform set them).
READ_WHEN_USED = ("VLLM_WORKER_MULTIPROC_METHOD", "VLLM_DISABLE_SHARED_EXPERTS_STREAM", "VLLM_SSM_CONV_STATE_LAYOUT",
                  "LOCAL_WORLD_SIZE", "NUMEXPR_MAX_THREADS")  # fmt: skip
INDUCTOR_CONFIG = {  # platforms/cpu.py: one compile thread (no async compile from a daemon process) and kernels
    "TORCHINDUCTOR_COMPILE_THREADS": (None, "compile_threads", int),  # that do not call omp_get_num_threads
    "TORCHINDUCTOR_CPP_DYNAMIC_THREADS": ("cpp", "dynamic_threads", lambda value: value == "1"),
}


def carry_over(set_now: dict[str, str]) -> str | None:
    """Give a forked engine core what ``set_now`` (the variables vLLM's platform just set) gives a spawned one;
    the reason to spawn instead where a variable only a new process would read is among them (LD_PRELOAD: a
    library vLLM preloads for its engine core, e.g. tcmalloc, would be missing)."""
    unknown = sorted(k for k in set_now if k not in READ_WHEN_USED and k not in INDUCTOR_CONFIG)
    if unknown:
        return f"vLLM's CPU platform set {', '.join(unknown)} for a new process; a forked one would not read it"
    config = sys.modules.get("torch._inductor.config")
    for name, (section, key, parse) in INDUCTOR_CONFIG.items():
        if name in set_now and config is not None:
            setattr(getattr(config, section) if section else config, key, parse(set_now[name]))
    return None


def release_listeners() -> list[int]:
    """In a forked child: /dev/null in place of every TCP socket it inherited that has no peer: a listener, or one
    bound to listen on later (vLLM binds its port, forks the engine core, then listens). The parent keeps its own;
    closing the number outright could close an unrelated file that reuses it. Returns the fds replaced."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # not Linux
        return []
    null = os.open(os.devnull, os.O_RDWR)
    try:
        replaced = [fd for fd in fds if fd != null and _tcp_without_peer(fd)]
        for fd in replaced:
            os.dup2(null, fd)
    finally:
        os.close(null)
    return replaced


def _tcp_without_peer(fd: int) -> bool:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # not a socket, or already closed
        return False
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            return False
        sock.getpeername()
        return False  # connected: somebody else's conversation, not a port
    except OSError:  # ENOTCONN: listening, or bound to listen later
        return True
    finally:
        sock.detach()  # the fd stays open: this object only looked


def _spawned(why: str) -> None:
    logger.info("rerank-kit: engine core spawned as vLLM does: %s", why)


def install() -> None:
    """Fork vLLM's CPU engine core where ``RERANK_KIT_ENGINE_START=fork`` asks for it and it is safe (module doc)."""
    if os.environ.get(ENGINE_START_ENV) != ENGINE_FORK:
        return
    if (why := why_not_fork()) is not None:
        _spawned(why)
        return
    from vllm.platforms import cpu

    from rerank_kit.server.compat import pinned

    method = vars(cpu.CpuPlatform).get("check_and_update_config")
    if not isinstance(method, classmethod) or getattr(method.__func__, "rerank_kit", False):
        return
    if (changed := pinned("plugin.cpu_engine_start", method.__func__)) is not None:
        _spawned(changed)
        return
    original = method.__func__

    @functools.wraps(original)
    def check_and_update_config(cls: type, vllm_config: Any) -> None:
        before = dict(os.environ)
        original(cls, vllm_config)
        if os.environ.get("VLLM_WORKER_MULTIPROC_METHOD") != "spawn":
            return
        set_now = {k: v for k, v in os.environ.items() if before.get(k) != v}
        if (why := carry_over(set_now)) is not None:
            if not _STATE["said"]:
                _STATE["said"] = True
                _spawned(why)
            return
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"
        if not _STATE["forked"]:  # done by the API server; its forked engine core inherits the flag
            _STATE["forked"] = True
            os.register_at_fork(after_in_child=release_listeners)
            logger.info(FORK_MESSAGE)

    check_and_update_config.rerank_kit = True  # type: ignore[attr-defined]
    cpu.CpuPlatform.check_and_update_config = classmethod(check_and_update_config)  # type: ignore[assignment]

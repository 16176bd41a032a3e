"""`rerank-kit bench`: run a workload against an endpoint and return a JSON-able report.

From Python (needs a running server)::

    report = asyncio.run(run_bench(BenchConfig(urls=["http://127.0.0.1:8000"], concurrency=16)))
    report["summary"]["pairs_per_s"]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from rerank_kit import __version__
from rerank_kit._contract import HEALTH_PATH, MODELS_PATH, VERSION_PATH
from rerank_kit.bench.loadgen import LoadConfig, Sample, run_load
from rerank_kit.bench.metrics import run_quality, summarize
from rerank_kit.bench.workloads import Workload, load_workload
from rerank_kit.client import AsyncRerankClient
from rerank_kit.client._config import resolve_config
from rerank_kit.client.probe import probe
from rerank_kit.errors import APIConnectionError, ConfigError
from rerank_kit.launcher import machine


@dataclass
class BenchConfig:
    urls: list[str]
    api_key: str | None = None
    model: str | None = None
    workload: str = "random"
    docs_per_request: int = 100
    doc_tokens: int = 120
    cases: int = 64
    seed: int = 0
    concurrency: int = 16
    rate: float | None = None
    requests: int | None = None
    duration: float | None = None
    warmup: int = 8
    max_retries: int | None = None
    # Windows the server scores per long document, sent with every request (None: the server's default).
    max_chunks_per_doc: int | None = None
    timeout: float = 300.0
    # The load generator's HTTP stack: "aiohttp" (httpx-aiohttp's transport under the same client: less
    # CPU per request, so the generator is not what limits a fast server), "httpx" (the client's own), or
    # "auto": aiohttp when httpx-aiohttp is installed (the bench extra), else httpx. The report says which.
    http: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


def http_stack(http: str) -> str:
    """``http`` resolved: "auto" becomes "aiohttp" when httpx-aiohttp is importable, else "httpx"."""
    if http not in ("auto", "aiohttp", "httpx"):
        raise ConfigError(f"--http must be auto, aiohttp or httpx, not {http!r}")
    if http == "httpx":
        return http
    try:
        import httpx_aiohttp  # noqa: F401
    except ImportError:
        if http == "aiohttp":
            raise ConfigError("--http aiohttp needs httpx-aiohttp: pip install 'rerank-kit[bench]'") from None
        return "httpx"
    return "aiohttp"


def load_transport(http: str, concurrency: int) -> httpx.AsyncBaseTransport | None:
    """The transport for a resolved ``http`` stack (None: the client's default)."""
    if http == "httpx":
        return None
    from httpx_aiohttp import AiohttpTransport

    # a connection per request in flight, kept open between requests
    connections = max(100, 2 * concurrency)
    return AiohttpTransport(limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))


def machine_facts() -> dict[str, Any]:
    host = machine.detect()
    cpu_model = ""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model,
        "cpus": host.cpu_count,
        "memory_gib": round(host.total_memory / 2**30, 1),
        "gpus": host.gpus,
        "bf16": host.bf16_fast,
    }


def server_facts(urls: list[str], api_key: str | None = None) -> dict[str, Any]:
    """What the server says about itself: /version, /v1/models; and rerank-kit's launch command when it started it."""
    from rerank_kit import launcher

    facts: dict[str, Any] = {"urls": urls}
    with httpx.Client() as http:
        for url in urls:
            info: dict[str, Any] = {}
            try:
                info["version"] = probe(url, VERSION_PATH, api_key=api_key, timeout=10, http=http).json().get("version")
                models = probe(url, MODELS_PATH, api_key=api_key, timeout=10, http=http).json().get("data", [])
                info["models"] = [{k: m.get(k) for k in ("id", "root", "max_model_len")} for m in models]
            except (httpx.HTTPError, ValueError) as exc:
                info["error"] = str(exc)
            for record in launcher.list_servers():
                if record.url == url.rstrip("/"):
                    info["launch_command"] = record.command
            facts[url] = info
    return facts


def check_reachable(urls: list[str], timeout: float = 5.0) -> None:
    """Fail in seconds, not after a minute of retries, when an endpoint is not listening at all.

    Only a refused or unresolvable connection fails; any HTTP answer (503 while loading, 401) passes,
    so the client's retries still cover a server that is starting or restarting.
    """
    with httpx.Client() as http:
        for url in urls:
            try:
                probe(url, HEALTH_PATH, timeout=timeout, http=http)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise APIConnectionError(
                    f"cannot reach {url} ({exc}): is the server running? `rerank-kit status` lists the servers "
                    "rerank-kit started; pass the base URL without /v1/rerank"
                ) from None


async def run_bench(
    config: BenchConfig,
    *,
    workload: Workload | None = None,
    on_progress: Callable[[Sample, float], None] | None = None,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Run one load level and return the report (JSON-able)."""
    await asyncio.to_thread(check_reachable, config.urls)
    workload = workload or load_workload(
        config.workload,
        docs_per_request=config.docs_per_request,
        doc_tokens=config.doc_tokens,
        cases=config.cases,
        seed=config.seed,
    )
    largest = max(len(c.documents) for c in workload.cases)
    load = LoadConfig(
        concurrency=config.concurrency,
        rate=config.rate,
        requests=config.requests,
        duration=config.duration,
        warmup=config.warmup,
        seed=config.seed,
        keep_scores=workload.judged,
        max_chunks_per_doc=config.max_chunks_per_doc,
    )
    http = http_stack(config.http)
    # One request per case, exactly as the workload defines it: no client-side splitting.
    async with AsyncRerankClient(
        config.urls,
        api_key=config.api_key,
        model=config.model,
        timeout=config.timeout,
        max_retries=config.max_retries,
        max_docs_per_request=largest,
        transport=load_transport(http, config.concurrency),
    ) as client:
        result = await run_load(client, workload, load, on_progress=on_progress, stop=stop)
        replicas = client.replica_counts()
        retries = client.retry_count()
        replays = client.replay_count()
    # the key the client sent, by the client's own rule (the argument, else $RERANK_KIT_API_KEY): a keyed server
    # answers /version with 401
    api_key = resolve_config(config.urls, api_key=config.api_key).api_key
    return {
        "rerank_kit": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "server": await asyncio.to_thread(server_facts, config.urls, api_key),
        "workload": {
            "name": workload.name,
            "description": workload.description,
            "cases": len(workload.cases),
            **workload.params,
        },
        "load": {**{k: v for k, v in asdict(load).items() if k != "keep_scores"}, "http": http},
        "summary": summarize(result),
        "quality": run_quality(workload, result),
        "replicas": replicas,
        "retries": retries,
        "replays": replays,  # requests whose connection closed unanswered, sent once more (not retries)
    }

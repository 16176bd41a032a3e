"""Commands for deployments elsewhere: Kubernetes manifests (k8s) and the check of each model on a GPU box
(verify-models)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rerank_kit import launcher
from rerank_kit.recipes import DEFAULT_GPU_MODEL, get_recipe

from ._options import DtypeOpt, FamilyOpt, MaxLenOpt, ModelArg, say


def k8s(
    model: ModelArg = None,
    family: FamilyOpt = None,
    image: Annotated[str, typer.Option(help="Image built from this repository's Dockerfile.")] = "rerank-kit:latest",
    replicas: Annotated[int, typer.Option(help="Pods to start with (and the autoscaler's minimum).")] = 1,
    max_replicas: Annotated[int, typer.Option("--max-replicas", help="The autoscaler's maximum.")] = 4,
    gpus: Annotated[int, typer.Option(help="GPUs per pod (tensor parallel).")] = 1,
    metric: Annotated[
        str,
        typer.Option(
            help="What the autoscaler scales on: cpu (metrics-server, any cluster) or in-flight "
            "(vLLM's queue; also emits the Prometheus scrape job and prometheus-adapter rule it needs)."
        ),
    ] = "cpu",
    target_cpu: Annotated[
        str | None,
        typer.Option(
            "--target-cpu",
            help="--metric cpu: average CPU per pod to aim for, e.g. 1500m (default: an estimate for a busy pod).",
        ),
    ] = None,
    target_in_flight: Annotated[
        int,
        typer.Option("--target-in-flight", help="--metric in-flight: requests running + waiting per pod to aim for."),
    ] = 32,
    api_key_secret: Annotated[
        str, typer.Option("--api-key-secret", help="Secret with an 'api-key' entry.")
    ] = "rerank-kit-api-key",  # noqa: S107 - the name of a Secret, not a key
    hf_cache_claim: Annotated[
        str | None, typer.Option("--hf-cache-claim", help="PersistentVolumeClaim for the weights cache.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the Deployment/Service/HPA.")] = None,
    namespace: Annotated[str | None, typer.Option(help="Namespace.")] = None,
) -> None:
    """Print Kubernetes manifests (Deployment, Service, HorizontalPodAutoscaler) for a model (default: GPU).

    The container's root filesystem is read-only; it writes to volumes only.
    """
    from rerank_kit.launcher.k8s import DEFAULT_TARGET_CPU, K8sOptions, manifests, to_yaml

    recipe = get_recipe(model or DEFAULT_GPU_MODEL, family)
    options = K8sOptions(
        image=image,
        name=name,
        namespace=namespace,
        replicas=replicas,
        max_replicas=max_replicas,
        gpus=gpus,
        metric=metric,
        target_cpu=target_cpu or DEFAULT_TARGET_CPU,
        target_in_flight=target_in_flight,
        api_key_secret=api_key_secret,
        hf_cache_claim=hf_cache_claim,
    )
    print(to_yaml(manifests(recipe, options), recipe), end="")


def verify_models(
    models: Annotated[
        list[str] | None,
        typer.Argument(metavar="MODEL", help="Models to check, one server at a time (default: the GPU set)."),
    ] = None,
    family: FamilyOpt = None,
    port: Annotated[int, typer.Option(help="Port each server takes in turn.")] = launcher.DEFAULT_PORT,
    dtype: DtypeOpt = None,
    max_model_len: MaxLenOpt = None,
    eager: Annotated[bool, typer.Option("--eager", help="Skip torch.compile: faster start, slower serving.")] = False,
    tolerance: Annotated[float, typer.Option(help="Largest acceptable |Δscore| against the reference.")] = 0.02,
    bench_requests: Annotated[int, typer.Option("--bench-requests", help="Requests in each short benchmark.")] = 100,
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the JSON report.")] = Path(
        "verify-models.json"
    ),
) -> None:
    """Serve each model in turn and check it for real: self-check, scores vs the reference, a short bench.

    Needs each model's weights (downloaded by vLLM on first start where the hub is reachable). Exits 1
    when any model fails; the report says which and why. `make verify-gpu` runs it on a CUDA box.
    """
    from rerank_kit.bench.acceptance import GPU_MODELS
    from rerank_kit.bench.acceptance import verify_models as run
    from rerank_kit.bench.report import write_json

    options = launcher.ServeOptions(port=port, dtype=dtype, max_model_len=max_model_len, eager=eager)
    report = run(
        models or GPU_MODELS, options, family=family, say=say, tolerance=tolerance, bench_requests=bench_requests
    )
    write_json(report, out_path)
    for row in report["models"]:
        say(f"{'PASS' if row['passed'] else 'FAIL'} {row['model']}: {row.get('error') or row.get('self_check')}")
    say(f"Report: {out_path}")
    if not report["passed"]:
        raise typer.Exit(1)

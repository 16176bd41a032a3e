"""Kubernetes manifests for a reranker: Deployment, Service and HorizontalPodAutoscaler.

The container runs ``rerank-kit serve MODEL`` from the image built by this repository's Dockerfile,
so every vLLM flag still comes from the recipes, resolved on the GPU node it lands on. The API key
comes from a Secret mounted as a file (never an environment variable in the manifest).

    rerank-kit k8s mixedbread-ai/mxbai-rerank-base-v2 --replicas 2 --max-replicas 8 > reranker.yaml
    kubectl create secret generic rerank-kit-api-key --from-literal=api-key="$(openssl rand -hex 24)"
    kubectl apply -f reranker.yaml
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rerank_kit.errors import ConfigError
from rerank_kit.recipes import Recipe

PORT = 8000
KEY_MOUNT = "/etc/rerank-kit"


@dataclass(frozen=True)
class K8sOptions:
    image: str = "rerank-kit:latest"
    name: str | None = None
    namespace: str | None = None
    replicas: int = 1
    max_replicas: int = 4
    gpus: int = 1
    # Autoscale on in-flight requests per pod (vLLM's vllm:num_requests_running gauge, exported to
    # the custom metrics API by prometheus-adapter as vllm_num_requests_running).
    target_in_flight: int = 32
    api_key_secret: str = "rerank-kit-api-key"  # noqa: S105 - the name of a Secret, not a key
    hf_cache_claim: str | None = None  # a PersistentVolumeClaim for weights; emptyDir when None


def _name(recipe: Recipe, name: str | None) -> str:
    if name:
        return name
    base = recipe.model_id.rstrip("/").split("/")[-1].lower()
    slug = re.sub(r"[^a-z0-9-]+", "-", base).strip("-")[:50]
    return f"rerank-{slug}" if slug else "rerank-kit"


def manifests(recipe: Recipe, options: K8sOptions) -> list[dict[str, Any]]:
    if options.replicas < 1 or options.max_replicas < options.replicas:
        raise ConfigError("need 1 <= --replicas <= --max-replicas")
    if options.gpus < 1:
        raise ConfigError("--gpus must be >= 1 (the CPU back-end is for development machines)")
    name = _name(recipe, options.name)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "rerank-kit"}
    meta = {"name": name, "labels": labels, **({"namespace": options.namespace} if options.namespace else {})}
    args = [
        "serve",
        recipe.model_id,
        "--host",
        "0.0.0.0",  # noqa: S104 - inside the pod; the Service and the API key guard it
        "--port",
        str(PORT),
        "--device",
        "cuda",
        "--api-key-file",
        f"{KEY_MOUNT}/api-key",
    ]
    if options.gpus > 1:
        args += ["--tensor-parallel-size", str(options.gpus)]
    probe = {"httpGet": {"path": "/health", "port": PORT}}
    hf_cache: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": options.hf_cache_claim}} if options.hf_cache_claim else {"emptyDir": {}}
    )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
                    "containers": [
                        {
                            "name": "vllm",
                            "image": options.image,
                            "command": ["rerank-kit"],
                            "args": args,
                            "ports": [{"name": "http", "containerPort": PORT}],
                            "resources": {"limits": {"nvidia.com/gpu": options.gpus}},
                            # Weights download and compile before /health answers: allow up to 20 min.
                            "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 120},
                            "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
                            "livenessProbe": {**probe, "periodSeconds": 15, "failureThreshold": 4},
                            "volumeMounts": [
                                {"name": "api-key", "mountPath": KEY_MOUNT, "readOnly": True},
                                {"name": "hf-cache", "mountPath": "/home/rerank/.cache/huggingface"},
                                {"name": "shm", "mountPath": "/dev/shm"},  # noqa: S108 - a memory volume for torch
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "api-key",
                            "secret": {
                                "secretName": options.api_key_secret,
                                "items": [{"key": "api-key", "path": "api-key"}],
                            },
                        },
                        {"name": "hf-cache", **hf_cache},
                        # vLLM uses shared memory between its processes.
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"selector": labels, "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]},
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": options.replicas,
            "maxReplicas": options.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "vllm_num_requests_running"},
                        "target": {"type": "AverageValue", "averageValue": str(options.target_in_flight)},
                    },
                }
            ],
            # A new pod takes minutes to become ready: scale up fast, down slowly.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
        },
    }
    return [deployment, service, hpa]


def to_yaml(docs: list[dict[str, Any]], recipe: Recipe) -> str:
    import yaml

    header = (
        f"# {recipe.model_id} ({recipe.family}) generated by `rerank-kit k8s`.\n"
        "# Needs: the rerank-kit image (docker build -t rerank-kit .), the NVIDIA device plugin, a Secret\n"
        "# with the API key (kubectl create secret generic rerank-kit-api-key --from-literal=api-key=...),\n"
        "# and prometheus-adapter exposing vllm:num_requests_running as vllm_num_requests_running for the HPA.\n"
    )

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # plain YAML, no &anchors for shared label dicts
            return True

    return header + yaml.dump_all(docs, Dumper=Dumper, sort_keys=False)

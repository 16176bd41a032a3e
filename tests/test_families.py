"""Every recipe architecture served by real vLLM through rerank-kit's launcher, and its scores
compared with the model authors' reference implementation (rerank_kit.reference) in float32.

One server per family (a tiny fixed-seed model of the real architecture), shared by the
serving checks and the parity checks of that family.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import httpx
import pytest
from transformers import AutoTokenizer

from conftest import SERVER_FIXTURES, SERVER_SPECS, TINY_FAMILIES, queued_server
from rerank_kit import RerankClient
from rerank_kit._contract import ENGINE_FORK, ENGINE_START_ENV, VLLM_API_KEY_ENV, version_tuple
from rerank_kit.errors import SelfCheckError
from rerank_kit.launcher import machine, vllm_version
from rerank_kit.launcher.reference import load_reference
from rerank_kit.launcher.selfcheck import self_check
from rerank_kit.recipes import PIECEWISE_KEY, get_recipe
from rerank_kit.server import engine_batch, fast_bpe
from rerank_kit.server.batching import ENVS_MESSAGE, HANDOFF_MESSAGE
from rerank_kit.server.bookkeeping import MESSAGE as BOOKKEEPING_MESSAGE
from rerank_kit.server.bookkeeping import TENSORS_MESSAGE
from rerank_kit.server.compat import pinned, requirement, verified_releases
from rerank_kit.server.engine_start import FORK_MESSAGE
from rerank_kit.server.fast_bpe import READY_MESSAGE as FAST_BPE_MESSAGE
from rerank_kit.server.parsed_body import HANDED_MESSAGE
from rerank_kit.server.plugin import BATCHED_MESSAGE
from rerank_kit.server.responses import BUILT_MESSAGE
from startup_log import START_UP_END, Context, unexplained

pytestmark = pytest.mark.vllm

# Parity tolerance on raw scores (logits; cosine for embeddings) in float32.
TOLERANCE = 1e-4
# A negative control must miss the reference by at least this much.
CONTROL_MARGIN = 100 * TOLERANCE

QUERIES = [
    "What is vLLM?",
    "how do I bake bread",
    "Who wrote To Kill a Mockingbird?",
]
DOCUMENTS = [
    "vLLM is a fast and easy-to-use library for LLM inference and serving.",
    "Mix flour, water, salt and yeast.\nLet it rise, then bake it in a hot oven!",
    "Harper Lee wrote To Kill a Mockingbird, published in 1960.",
    "def rerank(query, documents):\n    return sorted(documents, key=score, reverse=True)",
    "Wie spät ist es? 今天天气很好。",
]
LLM_FAMILIES = {"qwen3-reranker", "qwen3-reranker-seq-cls", "mxbai-rerank-v2", "bge-reranker-v2-gemma"}
# Families whose raw score is a cosine (no activation): a bi-encoder's, or a listwise reranker's.
COSINE_SCORES = {"cosine", "listwise"}
INSTRUCTION = "Given a question, find the passage that answers it"


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family_server(request, server_queue):
    """One server per family (conftest.family_spec), the next one starting while this one's tests run."""
    yield from queued_server(request, server_queue)


# jina-reranker-v2's weights carry its flash-attention names, which only its remote modeling code
# reads; the reference runs the same weights under the standard XLM-R names they were renamed from.
REFERENCE_WEIGHTS = {"jina-reranker-v2": "bge-reranker"}


@pytest.fixture(scope="module")
def reference(family_server, tiny_model):
    family = family_server.recipe.family
    path = tiny_model(REFERENCE_WEIGHTS[family]) if family in REFERENCE_WEIGHTS else family_server.model
    return load_reference(family, str(path))


def _rerank(server, query, documents, **extra):
    resp = httpx.post(f"{server.url}/v1/rerank", json={"query": query, "documents": documents, **extra}, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _score(server, queries, documents, **extra):
    resp = httpx.post(f"{server.url}/v1/score", json={"queries": queries, "documents": documents, **extra}, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _all_pairs():
    return [(q, d) for q in QUERIES for d in DOCUMENTS]


# --- serving ---------------------------------------------------------------------------------------


def test_rerank_returns_every_document_sorted_by_score(family_server):
    body = _rerank(family_server, QUERIES[0], DOCUMENTS)
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(r["document"]["text"] == DOCUMENTS[r["index"]] for r in results)
    assert body["usage"]["prompt_tokens"] > 0


def test_rerank_top_n(family_server):
    full = _rerank(family_server, QUERIES[1], DOCUMENTS)["results"]
    top = _rerank(family_server, QUERIES[1], DOCUMENTS, top_n=2)["results"]
    assert [r["index"] for r in top] == [r["index"] for r in full[:2]]


def test_score_one_to_many_matches_rerank(family_server):
    ranked = {r["index"]: r["relevance_score"] for r in _rerank(family_server, QUERIES[2], DOCUMENTS)["results"]}
    data = _score(family_server, QUERIES[2], DOCUMENTS)["data"]
    assert [d["index"] for d in data] == list(range(len(DOCUMENTS)))
    for d in data:
        assert d["score"] == pytest.approx(ranked[d["index"]], abs=1e-6)


def test_score_many_to_many_is_pairwise(family_server):
    one_to_one = [_score(family_server, q, d)["data"][0]["score"] for q, d in zip(QUERIES, DOCUMENTS, strict=False)]
    paired = _score(family_server, QUERIES, DOCUMENTS[: len(QUERIES)])["data"]
    assert [d["score"] for d in paired] == pytest.approx(one_to_one, abs=1e-6)


# --- parity with the reference implementation ------------------------------------------------------


def test_scores_match_reference(family_server, reference):
    pairs = _all_pairs()
    raw_ref = reference.scores(pairs)
    served_raw, served = [], []
    for query in QUERIES:
        raw = _rerank(family_server, query, DOCUMENTS, use_activation=False)["results"]
        served_raw += [s for _, s in sorted((r["index"], r["relevance_score"]) for r in raw)]
        served += [d["score"] for d in _score(family_server, query, DOCUMENTS)["data"]]
    worst_raw = max(abs(a - b) for a, b in zip(served_raw, raw_ref, strict=True))
    worst = max(abs(a - b) for a, b in zip(served, reference.activate(raw_ref), strict=True))
    print(f"{family_server.recipe.family}: max |Δ raw| = {worst_raw:.2e}, max |Δ score| = {worst:.2e}")
    assert worst_raw <= TOLERANCE
    assert worst <= TOLERANCE


def test_token_ids_match_reference(family_server, reference):
    if family_server.recipe.score_kind == "cosine":
        pytest.skip("bi-encoders embed query and document separately; their scores are compared above")
    from vllm_prompts import prompt_token_ids

    for query, document in _all_pairs():
        expected = reference.token_ids(query, document)
        assert prompt_token_ids(family_server.command, query, document) == expected, (query, document)
        served = _rerank(family_server, query, [document])
        assert served["usage"]["prompt_tokens"] == len(expected)


def test_instruction_matches_reference(family_server, reference):
    if not family_server.recipe.supports_instruction:
        body = httpx.post(
            f"{family_server.url}/v1/rerank",
            json={"query": QUERIES[0], "documents": DOCUMENTS, "instruction": INSTRUCTION},
            timeout=60,
        )
        assert body.status_code == 400, "an instruction the model cannot use must be refused, not ignored"
        assert "instruction" in body.json()["error"]["message"]
        return
    from vllm_prompts import prompt_token_ids

    query, document = QUERIES[0], DOCUMENTS[0]
    expected_ids = reference.token_ids(query, document, INSTRUCTION)
    assert _rerank(family_server, query, [document], instruction=INSTRUCTION)["usage"]["prompt_tokens"] == len(
        expected_ids
    )
    assert prompt_token_ids(family_server.command, query, document, INSTRUCTION) == expected_ids
    raw_ref = reference.scores([(query, d) for d in DOCUMENTS], instruction=INSTRUCTION)
    served = _rerank(family_server, query, DOCUMENTS, instruction=INSTRUCTION, use_activation=False)["results"]
    served_raw = [s for _, s in sorted((r["index"], r["relevance_score"]) for r in served)]
    assert max(abs(a - b) for a, b in zip(served_raw, raw_ref, strict=True)) <= TOLERANCE
    without = reference.scores([(query, d) for d in DOCUMENTS])
    assert max(abs(a - b) for a, b in zip(without, raw_ref, strict=True)) > CONTROL_MARGIN


def test_seq_cls_conversion_scores_like_the_original(family_server, tiny_model):
    if family_server.recipe.family != "qwen3-reranker-seq-cls":
        pytest.skip("only for the converted Qwen3 checkpoint")
    original = load_reference("qwen3-reranker", str(tiny_model("qwen3-reranker")))
    served = [d["score"] for d in _score(family_server, QUERIES[0], DOCUMENTS)["data"]]
    expected = original.activate(original.scores([(QUERIES[0], d) for d in DOCUMENTS]))
    assert max(abs(a - b) for a, b in zip(served, expected, strict=True)) <= TOLERANCE


def _verify(server, weights=None):
    args = [
        sys.executable,
        "-m",
        "rerank_kit.cli",
        "verify",
        server.model,
        "--family",
        server.recipe.family,
        "--url",
        server.url,
        "--tolerance",
        str(TOLERANCE),
        "--json",
    ]
    if weights:
        args += ["--weights", str(weights)]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


# Unrelated text to make a document many windows long, whatever the model's --max-model-len.
FILLER = "Bananas are a good source of potassium and grow in warm, humid places. "


def test_a_long_document_scores_as_its_best_window_and_a_short_one_as_before(family_server):
    """server.chunking through this family's recipe: a document past --max-model-len is scored in windows (with
    the instruction in every window's prompt where the family takes one) and gets the score its best window gets
    as a document of its own; documents that fit score as they do without chunking (max_chunks_per_doc=1)."""
    family = family_server.recipe.family
    extra = {"use_activation": False, **({"instruction": INSTRUCTION} if family in LLM_FAMILIES else {})}
    query = QUERIES[0]
    if family_server.recipe.score_kind == "listwise":  # every document in one prompt: not cut (README)
        response = httpx.post(f"{family_server.url}/v1/rerank", json={"query": query, "documents": DOCUMENTS},
                              timeout=120)  # fmt: skip
        assert response.status_code == 200 and "x-rerank-kit-chunks" not in response.headers
        return
    short = _rerank(family_server, query, DOCUMENTS, **extra)
    truncated = _rerank(family_server, query, DOCUMENTS, max_chunks_per_doc=1, **extra)
    # the same prompts; float32 logits move by a few ulps with how the engine batches them, hence TOLERANCE
    by_index = {r["index"]: r["relevance_score"] for r in truncated["results"]}
    assert len(short["results"]) == len(DOCUMENTS)
    for r in short["results"]:
        assert r["relevance_score"] == pytest.approx(by_index[r["index"]], abs=TOLERANCE), r["index"]
    assert not any("chunk" in r for r in short["results"])
    max_len = httpx.get(f"{family_server.url}/v1/models", timeout=30).json()["data"][0]["max_model_len"]
    document = FILLER * (3 * max_len // 10) + DOCUMENTS[0]  # about 15 tokens a sentence: 4 windows or more
    response = httpx.post(
        f"{family_server.url}/v1/rerank", json={"query": query, "documents": [document], **extra}, timeout=300
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    chunk = result["chunk"]
    assert chunk["count"] >= 3 and 0 <= chunk["index"] < chunk["count"]
    pairs = int(response.headers["x-rerank-kit-chunks"].split(";")[0].removeprefix("pairs="))
    assert pairs == chunk["count"] and result["document"]["text"] == document
    window = document[chunk["start"] : chunk["end"]]
    (alone,) = _rerank(family_server, query, [window], **extra)["results"]
    assert "chunk" not in alone, "a window must fit the model as a document of its own"
    assert result["relevance_score"] == pytest.approx(alone["relevance_score"], abs=TOLERANCE)
    (first,) = _rerank(family_server, query, [document], max_chunks_per_doc=1, **extra)["results"]
    assert result["relevance_score"] >= first["relevance_score"] - TOLERANCE  # the best of several windows


def test_verify_command_passes_on_a_correct_server(family_server, tiny_model):
    family = family_server.recipe.family
    weights = tiny_model(REFERENCE_WEIGHTS[family]) if family in REFERENCE_WEIGHTS else None
    result = _verify(family_server, weights)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["max_abs"] <= TOLERANCE and report["top1_agreement"] == 1.0


def _self_check(server, recipe=None):
    """rerank-kit's start-up self-check against ``server``, judged by ``recipe`` (default: the server's)."""
    with RerankClient(server.url) as client:
        return self_check(client, recipe or server.recipe, tokenizer=server.model, model=server.command.model_name)


def _prompt_only(server):
    args = [sys.executable, "-m", "rerank_kit.cli", "verify", server.model, "--family", server.recipe.family]
    return subprocess.run([*args, "--url", server.url, "--prompt-only"], capture_output=True, text=True, timeout=600)


def test_self_check_passes_on_a_correct_server(family_server):
    report = _self_check(family_server)
    if family_server.recipe.score_kind == "cosine":
        assert report.skipped and not report.probes
        return
    assert report.passed, report.summary()
    assert len(report.probes) == (2 if family_server.recipe.supports_instruction else 1)
    assert all(p.server_tokens > 0 for p in report.probes)


def test_start_up_log_has_no_unexplained_warning(family_server):
    """Every WARNING/ERROR before start-up completed has its cause on this server (tests/startup_log.py):
    this machine, a setting in the command rerank-kit built, or vLLM's notice about the model."""
    text = family_server.log.read_text(errors="replace")
    context = Context(family_server.command, machine.detect(), family_server.recipe.family)
    flagged = unexplained(text, context)
    assert not flagged, "\n".join(flagged)
    assert "Chat template warmup failed" not in text.split(START_UP_END, 1)[0]


def test_the_engine_core_was_forked_from_the_api_server(family_server):
    """On this one-worker CPU server with Intel OpenMP preloaded the launcher asks for a forked engine core, and
    the plugin forked it (said once, by the API server): every score this module compares came from one."""
    if family_server.command.env.get(ENGINE_START_ENV) != ENGINE_FORK:
        pytest.skip("Intel OpenMP not found here: the launcher keeps vLLM's spawn (tests/test_launcher.py)")
    verified = verified_releases(requirement("plugin.cpu_engine_start")).split(", ")
    if vllm_version() not in verified:  # make test-images runs older releases
        pytest.skip(f"vLLM {vllm_version()}: the fork is verified on {', '.join(verified)} only")
    assert family_server.command.env["KMP_AFFINITY"] == "none"
    said = re.findall(
        r"\((\w+) pid=\d+\)[^\n]*" + re.escape(FORK_MESSAGE), family_server.log.read_text(errors="replace")
    )
    assert said == ["APIServer"]


def test_prompts_are_built_per_request(family_server):
    """The plugin's batched path (one render, one tokenizer call per distinct text) served the requests above."""
    if family_server.recipe.family == "embedding":
        pytest.skip("a bi-encoder: no score prompts")
    if family_server.recipe.score_kind == "listwise":
        pytest.skip("vLLM builds a listwise request's one prompt itself (jina-reranking-scoring): no pairs to batch")
    with RerankClient(family_server.url, model=family_server.model) as client:
        client.rerank("What is vLLM?", ["vLLM is an inference engine.", "Paris is in France."])
    log = family_server.log.read_text(errors="replace")
    assert HANDOFF_MESSAGE in log  # handed to the engine at once: the parity tests above ran through it
    assert ENVS_MESSAGE in log  # and vLLM's variables read once from then on (server.bookkeeping.cache_envs)
    from vllm.v1.serial_utils import MsgpackDecoder

    if pinned("plugin.decode_tensor", MsgpackDecoder._decode_tensor) is None:  # the scores read with one copy
        assert TENSORS_MESSAGE in log
    assert HANDED_MESSAGE in log  # and vLLM's routes read the guard's parsed body (server.parsed_body)
    if version_tuple(vllm_version() or "0") >= (0, 30):  # make test-images runs older releases
        assert BUILT_MESSAGE in log  # answers built from dicts (server.responses), the parity tests' too
    if family_server.recipe.images:
        # vLLM's model class builds a vision reranker's prompt (get_score_template, the score token appended in
        # post_process_tokens, images placed by its processor): the plugin leaves it to vLLM's per-pair path
        assert BATCHED_MESSAGE not in log
        return
    assert BATCHED_MESSAGE in log
    if not engine_batch.unverified():  # a request's pairs reached the engine core in one message
        assert engine_batch.MESSAGE in log and "sent one by one" not in log
    # a byte-level BPE like Qwen2's: tiktoken encodes the plain texts (server.fast_bpe), said once it is built
    tokenizer = AutoTokenizer.from_pretrained(family_server.model)
    assert (FAST_BPE_MESSAGE in log) == (fast_bpe.build(tokenizer)[0] is not None)


def test_vllm_metrics_count_every_request(family_server):
    """With the plugin's histograms (server.bookkeeping: the bucket found by bisection), vLLM's /metrics still
    agree with themselves: each finished engine request in the latency histogram, its buckets cumulative, and the
    prompt-token histogram's sum equal to the prompt-token counter, after a request of 16 pairs."""
    from prometheus_client.parser import text_string_to_metric_families

    with RerankClient(family_server.url, model=family_server.model) as client:
        client.rerank("What is vLLM?", [f"document {i} about vLLM" for i in range(16)])
    log = family_server.log.read_text(errors="replace")
    assert re.search(re.escape(BOOKKEEPING_MESSAGE) + r" clone, request ids, histograms", log)
    key = family_server.command.env.get(VLLM_API_KEY_ENV)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    text = httpx.get(f"{family_server.url}/metrics", headers=headers, timeout=30).raise_for_status().text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            slot = (sample.name, sample.labels.get("le"))
            samples[slot] = samples.get(slot, 0.0) + sample.value
    finished = sum(v for (name, _), v in samples.items() if name == "vllm:request_success_total")
    assert finished >= 16
    assert samples[("vllm:e2e_request_latency_seconds_count", None)] == finished
    assert samples[("vllm:e2e_request_latency_seconds_bucket", "+Inf")] == finished
    latency = "vllm:e2e_request_latency_seconds_bucket"
    cumulative = [v for _, v in sorted((float(le), v) for (name, le), v in samples.items() if name == latency)]
    assert cumulative == sorted(cumulative)
    assert samples[("vllm:request_prompt_tokens_sum", None)] == samples[("vllm:prompt_tokens_total", None)]


def test_a_listwise_list_goes_whole_through_the_client(family_server):
    """A listwise model scores each document against the whole list: the client sends it as given, in one
    request, duplicates included, and its scores are that request's. Split and deduplicated (the pairwise
    rule), they are not (the control)."""
    if family_server.recipe.score_kind != "listwise":
        pytest.skip("pairwise: splitting a list or scoring a duplicate once changes no score")
    query, documents = QUERIES[0], [*DOCUMENTS, DOCUMENTS[0]]
    whole = {r["index"]: r["relevance_score"] for r in _rerank(family_server, query, documents)["results"]}

    def client_scores(whole_lists):
        with RerankClient(family_server.url, model=family_server.model, max_docs_per_request=2,
                          whole_lists=whole_lists) as client:  # fmt: skip
            response = client.rerank(query, documents)
        return response.requests, {r.index: r.relevance_score for r in response.results}

    requests, scores = client_scores(True)
    assert requests == 1 and scores.keys() == whole.keys()
    for i, score in scores.items():
        assert score == pytest.approx(whole[i], abs=TOLERANCE), i
    requests, split = client_scores(False)
    assert requests == -(-len(DOCUMENTS) // 2)  # the distinct documents, 2 a request
    assert max(abs(split[i] - whole[i]) for i in whole) > CONTROL_MARGIN


# --- negative controls: each comparison above can fail ----------------------------------------------


def test_negative_control_swapped_roles_miss_the_reference(family_server, reference):
    """Scoring (document, query) instead of (query, document) must miss the reference by far."""
    if family_server.recipe.score_kind == "cosine":
        # Cosine is symmetric; the embedding control is the pooling one below.
        pytest.skip("symmetric score")
    raw_ref = reference.scores(_all_pairs())
    swapped = []
    for query in QUERIES:
        swapped += [
            _rerank(family_server, document, [query], use_activation=False)["results"][0]["relevance_score"]
            for document in DOCUMENTS
        ]
    assert max(abs(a - b) for a, b in zip(swapped, raw_ref, strict=True)) > CONTROL_MARGIN


def test_negative_control_wrong_pooling_misses_the_reference(family_server, reference):
    if family_server.recipe.score_kind != "cosine":
        pytest.skip("embedding models only")
    from sentence_transformers import SentenceTransformer, models

    module = SentenceTransformer(family_server.model, device="cpu")
    transformer = module[0]
    cls_model = SentenceTransformer(
        modules=[transformer, models.Pooling(transformer.get_word_embedding_dimension(), "cls"), models.Normalize()]
    )
    q = cls_model.encode([q for q, _ in _all_pairs()], convert_to_numpy=True)
    d = cls_model.encode([d for _, d in _all_pairs()], convert_to_numpy=True)
    wrong = [float((a * b).sum()) for a, b in zip(q, d, strict=True)]
    served = []
    for query in QUERIES:
        served += [x["score"] for x in _score(family_server, query, DOCUMENTS)["data"]]
    assert max(abs(a - b) for a, b in zip(served, wrong, strict=True)) > CONTROL_MARGIN
    assert max(abs(a - b) for a, b in zip(served, reference.scores(_all_pairs()), strict=True)) <= TOLERANCE


def _bare_spec(family, tiny_model, _):
    """The LLM reranker served like most blog posts do: overrides but no score template."""
    recipe = get_recipe(str(tiny_model(family)), family=family)
    overrides = {k: v for k, v in recipe.hf_overrides.items() if k != PIECEWISE_KEY}
    return dataclasses.replace(recipe, template=None, hf_overrides=overrides), {}


def _without_plugin_spec(_, tiny_model, __):
    """mxbai served with the right template but vLLM's whole-string tokenization (plugin disabled)."""
    recipe = get_recipe(str(tiny_model("mxbai-rerank-v2")), family="mxbai-rerank-v2")
    # VLLM_PLUGINS lists the general plugins vLLM may load; leaving rerank_kit out disables it.
    return recipe, {"env": {"VLLM_PLUGINS": "lora_filesystem_resolver"}}


SERVER_SPECS.update({"bare": _bare_spec, "without-plugin": _without_plugin_spec})
SERVER_FIXTURES.update(
    {"bare_server": lambda family: ("bare", family), "mxbai_without_plugin": lambda _: ("without-plugin", None)}
)


@pytest.fixture(scope="module", params=sorted(LLM_FAMILIES))
def bare_server(request, server_queue):
    yield from queued_server(request, server_queue)


def test_negative_control_without_template_misses_the_reference(bare_server):
    reference = load_reference(bare_server.recipe.family, bare_server.model)
    raw_ref = reference.scores(_all_pairs())
    served = []
    for query in QUERIES:
        results = _rerank(bare_server, query, DOCUMENTS, use_activation=False)["results"]
        served += [s for _, s in sorted((r["index"], r["relevance_score"]) for r in results)]
    worst = max(abs(a - b) for a, b in zip(served, raw_ref, strict=True))
    print(f"{bare_server.recipe.family} without template: max |Δ raw| = {worst:.2e}")
    assert worst > CONTROL_MARGIN
    verdict = _verify(bare_server)
    assert verdict.returncode == 1, "rerank-kit verify must flag a server without the score template"
    assert json.loads(verdict.stdout)["max_abs"] > CONTROL_MARGIN
    # the start-up self-check catches it with the tokenizer alone, and names the cause
    family = bare_server.recipe.family
    with pytest.raises(SelfCheckError, match=r"^self-check failed: .*score template was not applied"):
        _self_check(bare_server, get_recipe(bare_server.model, family=family)).raise_for_failure()


@pytest.fixture(scope="module")
def mxbai_without_plugin(request, server_queue):
    yield from queued_server(request, server_queue)


def test_mxbai_needs_piecewise_tokenization(mxbai_without_plugin):
    """The gap the plugin closes: same template, whole-string tokenization, scores move."""
    reference = load_reference("mxbai-rerank-v2", mxbai_without_plugin.model)
    query = "What is vLLM?"  # ends in punctuation: "?" + "\n" in the reference, "?\n" whole
    raw_ref = reference.scores([(query, d) for d in DOCUMENTS])
    results = _rerank(mxbai_without_plugin, query, DOCUMENTS, use_activation=False)["results"]
    served = [s for _, s in sorted((r["index"], r["relevance_score"]) for r in results)]
    worst = max(abs(a - b) for a, b in zip(served, raw_ref, strict=True))
    print(f"mxbai without rerank-kit's plugin: max |Δ raw| = {worst:.2e}")
    assert worst > CONTROL_MARGIN
    with pytest.raises(SelfCheckError, match=r"^self-check failed: .*plugin is not active"):
        _self_check(mxbai_without_plugin).raise_for_failure()
    verdict = _prompt_only(mxbai_without_plugin)
    assert verdict.returncode == 1 and "self-check failed:" in verdict.stderr, verdict.stderr


def test_verify_prompt_only_passes_on_a_correct_server(family_server):
    if family_server.recipe.family != "mxbai-rerank-v2":
        pytest.skip("one piecewise family is enough for the command line path")
    verdict = _prompt_only(family_server)
    assert verdict.returncode == 0 and "self-check passed" in verdict.stderr, verdict.stderr

"""A scoring request's answer built from plain dicts: vLLM's ``ServingScores._request_output_to_rerank_response`` and
``_request_output_to_score_response`` replaced by ones that read every pair's score in one tensor operation and
encode the answer with orjson. Installed by ``server.plugin``.

vLLM builds two pydantic objects per pair (``RerankDocument``, ``RerankResult``; ``ScoreResponseData`` for /score),
dumps the response model back to dicts, and ``JSONResponse`` encodes them with the json module; before that, each
pair's score is a ``squeeze()`` and an ``.item()`` on its own tensor. Measured inside the API server
(bench/RESULTS.md 11.5/11.6): 1.2 ms per 64-document rerank request on a Zen 4 EPYC, 4 % of its CPU. Here each
result is a copy of a template dict (the response models' own ``model_dump`` of a placeholder, made once, so a field a
release adds keeps its default and its place), every score comes from one ``torch.stack(...).tolist()``, and the
envelope (id, model, usage) is still vLLM's pydantic model. The JSON says the same: same keys in the same order,
same numbers (orjson writes the shortest float that reads back as the same double, as ``repr`` does; ``1e-05`` is
written ``1e-5``). Anything else takes vLLM's own code: a document that is not text (images: their parts are
validated by the models), a pair whose output is not one number or is not finite (vLLM answers those with its own
error), an error on a pair.

Pinned like the plugin's other vLLM patches: only on the bodies it was verified on (``server/compat.py``); on
another it steps aside, said once.
"""

from __future__ import annotations

import logging
import math
from operator import itemgetter
from typing import Any

# A child of vLLM's logger, so messages appear in the server log with its formatting.
logger = logging.getLogger("vllm.rerank_kit")
BUILT_MESSAGE = "rerank-kit: scoring responses built from dicts, every pair's score in one tensor operation"


def pair_scores(final_res_batch: list[Any]) -> list[float] | None:
    """Every pair's score, as vLLM's ``ScoringOutput.from_base`` reads it (the pooled output squeezed to a scalar,
    ``.item()``), in one ``torch.stack``; None where that would not give a finite number for every pair (an error,
    an output of more than one number, outputs of different shapes, NaN or infinity): vLLM's own code then runs."""
    import torch

    # vLLM < 0.32's outputs have no error (ScoringRequestOutput.from_base reads none there)
    if not final_res_batch or any(getattr(r, "error", None) is not None for r in final_res_batch):
        return None
    data = [r.outputs.data for r in final_res_batch]
    shape = data[0].shape
    if math.prod(shape) != 1 or any(d.shape != shape for d in data):
        return None
    scores = torch.stack(data).reshape(-1).tolist()
    return scores if all(math.isfinite(s) for s in scores) else None


def install(off: list[str]) -> bool:
    """Build /rerank and /score answers from dicts where ServingScores' builders are the bodies this was verified on;
    False (and a line in ``off``) where they are not."""
    from rerank_kit.server.compat import accepts, pinned

    try:
        import orjson
        from starlette.responses import JSONResponse
        from vllm import outputs
        from vllm.entrypoints.pooling.scoring import serving
    except ImportError:
        return False
    ServingScores = serving.ServingScores
    rerank_base = getattr(ServingScores, "_request_output_to_rerank_response", None)
    score_base = getattr(ServingScores, "_request_output_to_score_response", None)
    if getattr(rerank_base, "rerank_kit", False):
        return True
    keys = (("plugin.rerank_response", rerank_base), ("plugin.score_response", score_base))
    if not all(accepts(key, obj) for key, obj in keys):
        off.append("scoring responses built by vLLM's pydantic models (ServingScores' builders as in vLLM >= 0.30)")
        return False
    # the builders' bodies, and how they read a pair's score (pair_scores does the same at once)
    read = tuple(
        (key, getattr(getattr(outputs, cls, None), "from_base", None))
        for key, cls in (("plugin.scoring_output", "ScoringOutput"),
                         ("plugin.scoring_request_output", "ScoringRequestOutput"))
    )  # fmt: skip
    if changed := [c for c in (pinned(key, obj) for key, obj in (*keys, *read)) if c is not None]:
        off.extend(f"scoring responses built from dicts: {c}" for c in changed)
        return False
    # The models the pinned bodies build, as the serving module names them.
    names = ("RerankDocument", "RerankResult", "RerankResponse", "RerankUsage", "ScoreResponse", "ScoreResponseData",
             "UsageInfo")  # fmt: skip
    if missing := [n for n in names if not hasattr(serving, n)]:
        off.append(f"scoring responses built from dicts: {serving.__name__} has no {', '.join(missing)}")
        return False
    models = {n: getattr(serving, n) for n in names}
    # One placeholder of each per-pair model, dumped as vLLM dumps them: the dicts every result copies.
    result_template = models["RerankResult"](
        index=0, document=models["RerankDocument"](text=""), relevance_score=0.0
    ).model_dump()
    document_template = result_template["document"]
    score_template = models["ScoreResponseData"](index=0, score=0.0).model_dump()
    by_score = itemgetter("relevance_score")
    said: list[bool] = []

    class OrjsonResponse(JSONResponse):
        """``JSONResponse`` (its media type and headers) with orjson's encoding of the same content."""

        def render(self, content: Any) -> bytes:
            return orjson.dumps(content)

    def _say() -> None:
        if not said:
            said.append(True)
            logger.info(BUILT_MESSAGE)

    def _request_output_to_rerank_response(
        self: Any, final_res_batch: list[Any], request_id: str, model_name: str, documents: Any, top_n: int,
        num_prompt_tokens: int,
    ) -> Any:  # fmt: skip
        docs = documents if isinstance(documents, list) else [documents]
        scores = pair_scores(final_res_batch)
        if scores is None or len(docs) < len(scores) or not all(isinstance(d, str) for d in docs):
            return rerank_base(self, final_res_batch, request_id, model_name, documents, top_n, num_prompt_tokens)
        results = [
            {**result_template, "index": i, "document": {**document_template, "text": docs[i]}, "relevance_score": s}
            for i, s in enumerate(scores)
        ]
        results.sort(key=by_score, reverse=True)  # stable, as vLLM's sort of its models
        if top_n < len(docs):
            results = results[:top_n]
        usage = models["RerankUsage"](total_tokens=num_prompt_tokens, prompt_tokens=num_prompt_tokens)
        response = models["RerankResponse"](id=request_id, model=model_name, results=[], usage=usage).model_dump()
        response["results"] = results
        _say()
        return OrjsonResponse(content=response)

    def _request_output_to_score_response(
        self: Any, final_res_batch: list[Any], request_id: str, created_time: int, model_name: str,
        num_prompt_tokens: int,
    ) -> Any:  # fmt: skip
        scores = pair_scores(final_res_batch)
        if scores is None:
            return score_base(self, final_res_batch, request_id, created_time, model_name, num_prompt_tokens)
        usage = models["UsageInfo"](prompt_tokens=num_prompt_tokens, total_tokens=num_prompt_tokens)
        response = models["ScoreResponse"](
            id=request_id, created=created_time, model=model_name, data=[], usage=usage
        ).model_dump()
        response["data"] = [{**score_template, "index": i, "score": s} for i, s in enumerate(scores)]
        _say()
        return OrjsonResponse(content=response)

    # vLLM's own, for whoever looks past the patch (inspect.unwrap; fingerprint.of_object reads its source)
    for ours, base in (
        (_request_output_to_rerank_response, rerank_base),
        (_request_output_to_score_response, score_base),
    ):
        ours.rerank_kit = True  # type: ignore[attr-defined]
        ours.__wrapped__ = base  # type: ignore[attr-defined]
    ServingScores._request_output_to_rerank_response = _request_output_to_rerank_response
    ServingScores._request_output_to_score_response = _request_output_to_score_response
    return True

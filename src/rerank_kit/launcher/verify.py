"""`rerank-kit verify`: does a running server score like the model's reference implementation?

Sends a fixed set of query-document pairs to the server and compares its scores with the reference
computed here from the same weights (rerank_kit.launcher.reference): max |Δ|, mean |Δ| and rank agreement
(Kendall's tau and top-1 match per query). A server without the right template or overrides
misses by tenths; a correct bf16 server by about 1e-2; a correct float32 server by 1e-5.
Example (needs a running server and the weights)::

    from rerank_kit import RerankClient
    report = verify(RerankClient("http://127.0.0.1:8000"), load_reference("qwen3-reranker", "/models/q3"))
    report.max_abs
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rerank_kit.client import RerankClient
from rerank_kit.errors import ConfigError
from rerank_kit.launcher.models import resolve_model_path
from rerank_kit.launcher.reference import Reference
from rerank_kit.recipes import Recipe

# Queries ending in punctuation, documents with newlines, code and other languages: the cases where
# a prompt built the wrong way tokenizes differently.
VERIFY_QUERIES = [
    "What is vLLM?",
    "how do rerankers differ from embedding models",
    "Who wrote 'To Kill a Mockingbird'?",
    "Wie hoch ist der Mount Everest?",
]
VERIFY_DOCUMENTS = [
    "vLLM is a fast and easy-to-use library for LLM inference and serving.",
    "A cross-encoder reads the query and the document together and outputs one relevance score.\n"
    "It is slower than a bi-encoder.",
    "Harper Lee wrote To Kill a Mockingbird, published in 1960.",
    "Der Mount Everest ist mit 8849 Metern der höchste Berg der Erde.",
    "def rerank(query, docs):\n    return sorted(docs, key=score, reverse=True)",
    "Bananas are rich in potassium!",
]


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a between two score lists over the same items (1 = same order)."""
    n = len(a)
    if n < 2:
        return 1.0
    concordant = discordant = 0
    for i in range(n):
        for j in range(i + 1, n):
            s = (a[i] - a[j]) * (b[i] - b[j])
            if s > 0:
                concordant += 1
            elif s < 0:
                discordant += 1
    return (concordant - discordant) / (n * (n - 1) / 2)


@dataclass
class VerifyReport:
    model: str
    pairs: int
    max_abs: float
    mean_abs: float
    kendall_tau: float  # mean over queries
    top1_agreement: float  # share of queries whose best document agrees
    tolerance: float
    rows: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.max_abs <= self.tolerance and self.top1_agreement == 1.0


def verify(
    client: RerankClient,
    reference: Reference,
    *,
    queries: Sequence[str] = VERIFY_QUERIES,
    documents: Sequence[str] = VERIFY_DOCUMENTS,
    instruction: str | None = None,
    tolerance: float = 0.02,
    model: str | None = None,
) -> VerifyReport:
    """Compare the server's /v1/rerank scores with the reference on every (query, document) pair."""
    rows = []
    taus, top1 = [], []
    served_model = model or ""
    for query in queries:
        response = client.rerank(query, list(documents), model=model, instruction=instruction, return_documents=False)
        served_model = response.model
        served = [0.0] * len(documents)
        for r in response.results:
            served[r.index] = r.relevance_score
        expected = reference.activate(reference.scores([(query, d) for d in documents], instruction=instruction))
        for i, (s, e) in enumerate(zip(served, expected, strict=True)):
            rows.append({"query": query, "document": i, "served": s, "reference": e, "abs_diff": abs(s - e)})
        taus.append(kendall_tau(served, expected))
        top1.append(
            max(range(len(served)), key=served.__getitem__) == max(range(len(expected)), key=expected.__getitem__)
        )
    diffs = [r["abs_diff"] for r in rows]
    return VerifyReport(
        model=served_model,
        pairs=len(rows),
        max_abs=max(diffs),
        mean_abs=sum(diffs) / len(diffs),
        kendall_tau=sum(taus) / len(taus),
        top1_agreement=sum(top1) / len(top1),
        tolerance=tolerance,
        rows=rows,
    )


def local_weights(recipe: Recipe, weights: str | None = None) -> Path:
    """The directory holding ``recipe``'s weights on this machine: ``weights``, the model path itself,
    its packaged copy, or the Hugging Face cache. Never downloads."""
    if weights:
        path = Path(weights).expanduser()
        if not (path / "config.json").exists():
            raise ConfigError(f"--weights {weights!r} is not a model directory (no config.json)")
        return path
    resolved = resolve_model_path(recipe)
    if Path(resolved).is_dir():
        return Path(resolved)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved, local_files_only=True))
    except Exception as exc:
        raise ConfigError(
            f"the weights of {resolved} are not on this machine: `huggingface-cli download {resolved}` "
            "(or pass --weights DIR) so the reference can run locally"
        ) from exc


def verify_server(
    client: RerankClient,
    recipe: Recipe,
    *,
    weights: str | None = None,
    instruction: str | None = None,
    tolerance: float = 0.02,
    model: str | None = None,
) -> VerifyReport:
    """`rerank-kit verify`: the reference for ``recipe`` from local weights, compared with the server."""
    from rerank_kit.launcher.reference import load_reference

    reference = load_reference(recipe.family, str(local_weights(recipe, weights)))
    return verify(client, reference, instruction=instruction, tolerance=tolerance, model=model)


def tokenizer_source(recipe: Recipe, weights: str | None = None) -> str:
    """Where the self-check loads ``recipe``'s tokenizer: the local weights when present, else the hub id."""
    try:
        return str(local_weights(recipe, weights))
    except ConfigError:
        return resolve_model_path(recipe)

"""The start-up self-check: does a running server build the prompt the model's reference code builds?

A server can be healthy and still score wrong: a vLLM that ignores ``--chat-template`` for score
requests, a rerank-kit plugin that did not load (``VLLM_PLUGINS``, another environment), BPE merges
across prompt pieces. Each of those changes the number of prompt tokens, which the server reports
in ``usage.prompt_tokens``. The check sends one probe pair (a query ending in "?", a document with a
newline; again with an instruction where the family takes one) through the real /v1/rerank path and
compares the server's count with the reference prompt built here with the model's own tokenizer
(`rerank_kit.launcher.reference`; no weights needed).

    report = self_check(RerankClient(url), get_recipe("Qwen/Qwen3-Reranker-0.6B"), tokenizer="/models/q3")
    report.raise_for_failure()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rerank_kit.client import RerankClient
from rerank_kit.errors import BadRequestError, SelfCheckError
from rerank_kit.recipes import Recipe

if TYPE_CHECKING:
    from rerank_kit.launcher import Command

PROBE_QUERY = "What is vLLM?"
PROBE_DOCUMENT = "vLLM is an inference engine.\nIt serves rerankers too."
PROBE_INSTRUCTION = "Find documents that answer the question"


@dataclass(frozen=True)
class Probe:
    query: str
    document: str
    instruction: str | None
    server_tokens: int
    expected_tokens: int
    refused: str | None = None  # the server's error when it refused the probe (an instruction, say)

    @property
    def ok(self) -> bool:
        return self.refused is None and self.server_tokens == self.expected_tokens


@dataclass(frozen=True)
class SelfCheckReport:
    model: str
    family: str
    probes: list[Probe] = field(default_factory=list)
    skipped: str | None = None  # why nothing was compared (no tokenizer here, a family without a reference prompt)

    @property
    def passed(self) -> bool:
        return all(p.ok for p in self.probes)

    def summary(self) -> str:
        if self.skipped:
            return f"self-check skipped: {self.skipped}"
        counts = ", ".join(
            f"refused ({p.refused})" if p.refused else f"{p.server_tokens} vs {p.expected_tokens}" for p in self.probes
        )
        verdict = "passed" if self.passed else "failed"
        return f"self-check {verdict}: prompt tokens server vs reference {counts}"

    def raise_for_failure(self) -> None:
        """Raise SelfCheckError naming the likely cause when a probe's prompt differs."""
        bad = [p for p in self.probes if not p.ok]
        if not bad:
            return
        probe = bad[0]
        with_instruction = " (with an instruction)" if probe.instruction else ""
        if probe.refused:
            raise SelfCheckError(
                f"self-check failed: {self.model} refused the probe pair{with_instruction} that the {self.family} "
                f"recipe takes ({probe.refused}). Likely cause: the score template was not applied (the server "
                "was started without the recipe's --chat-template, or this vLLM ignores it)"
            )
        raise SelfCheckError(
            f"self-check failed: {self.model} built a {probe.server_tokens}-token prompt for the probe pair"
            f"{with_instruction}; the {self.family} reference builds {probe.expected_tokens}. "
            f"Likely cause: {likely_cause(self.family, probe, piecewise=_piecewise(self.family))}"
        )


def _piecewise(family: str) -> bool:
    from rerank_kit.recipes import FAMILIES

    recipe = FAMILIES.get(family)
    return recipe is not None and recipe.piecewise


def likely_cause(family: str, probe: Probe, *, piecewise: bool) -> str:
    """Why a server's prompt differs from the reference, from the size of the difference."""
    diff = probe.server_tokens - probe.expected_tokens
    if abs(diff) > 4:
        return (
            "the score template was not applied (this vLLM ignores --chat-template for /rerank and /score, "
            "or the server was started without it): serve with `rerank-kit serve`/`up` on a supported vLLM"
        )
    if piecewise:
        return (
            "token merges across prompt pieces: rerank-kit's vLLM plugin is not active in the server "
            "(install rerank-kit in the server's environment; VLLM_PLUGINS must include rerank_kit)"
        )
    return "the tokenizer or its special tokens differ from the model's (check --tokenizer and the model files)"


def self_check(client: RerankClient, recipe: Recipe, *, tokenizer: str, model: str | None = None) -> SelfCheckReport:
    """Send the probes to the server behind ``client`` and compare prompt sizes with the reference.

    ``tokenizer`` is a local model directory (or a hub id where the hub is reachable).
    """
    from rerank_kit.launcher.reference import Reference

    reference = Reference(recipe.family, tokenizer, recipe.score_kind)
    name = model or recipe.model_id
    if recipe.score_kind == "cosine":
        return SelfCheckReport(name, recipe.family, skipped="embedding models have no score prompt to compare")
    try:
        reference.token_ids(PROBE_QUERY, PROBE_DOCUMENT)
    except (OSError, ValueError) as exc:
        return SelfCheckReport(
            name, recipe.family, skipped=f"the tokenizer at {tokenizer!r} cannot be loaded here ({exc})"
        )
    probes: list[Probe] = []
    for instruction in (None, PROBE_INSTRUCTION) if recipe.supports_instruction else (None,):
        expected = len(reference.token_ids(PROBE_QUERY, PROBE_DOCUMENT, instruction))
        try:
            response = client.rerank(PROBE_QUERY, [PROBE_DOCUMENT], model=model, instruction=instruction)
        except BadRequestError as exc:  # e.g. a template with no place for the instruction the recipe sends
            probes.append(Probe(PROBE_QUERY, PROBE_DOCUMENT, instruction, 0, expected, refused=exc.message or str(exc)))
            break
        name = response.model or name
        if response.usage.prompt_tokens == 0:  # old releases (0.11 measured) report no usage for /rerank
            why = "this vLLM reports no prompt token count (usage.prompt_tokens = 0): nothing to compare"
            return SelfCheckReport(name, recipe.family, skipped=why)
        probes.append(Probe(PROBE_QUERY, PROBE_DOCUMENT, instruction, response.usage.prompt_tokens, expected))
        if not probes[-1].ok:
            break  # the first difference names the cause; more probes add nothing
    return SelfCheckReport(name, recipe.family, probes)


def check_command(command: Command, *, on_report: Callable[[SelfCheckReport], None] | None = None) -> SelfCheckReport:
    """The self-check of a server that ``command`` started (and is healthy); raises SelfCheckError on failure.

    Pass it as ``check=`` to the launcher's start functions: a failed check stops the server.
    """
    from rerank_kit._contract import VLLM_API_KEY_ENV
    from rerank_kit.launcher.verify import tokenizer_source

    key = command.environ({}).get(VLLM_API_KEY_ENV)
    served = command.model_name or command.recipe.model_id
    with RerankClient(command.url, api_key=key, max_retries=2, model=served) as client:
        report = self_check(client, command.recipe, tokenizer=tokenizer_source(command.recipe), model=served)
    if on_report is not None:
        on_report(report)
    report.raise_for_failure()
    return report

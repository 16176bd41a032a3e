"""Rerank many cases (``{"query", "documents", "name"?, "instruction"?, "top_n"?}``) on one server.

from rerank_kit.client.files import load_cases
with RerankClient("http://127.0.0.1:8000") as client:
    for result in rerank_cases(client, load_cases("data/rerank_samples.json"), top_n=3):
        print(result.name, result.response.results[0].index)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rerank_kit.client.client import RerankClient
from rerank_kit.errors import InstructionNotSupportedError, InvalidInputError, RerankKitError
from rerank_kit.types import RerankResponse


@dataclass(frozen=True)
class CaseResult:
    name: str
    query: str
    response: RerankResponse
    note: str | None = None  # e.g. "ranked without its instruction"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "query": self.query, **self.response.to_dict()}


def rerank_cases(
    client: RerankClient,
    cases: Iterable[Mapping[str, Any]],
    *,
    top_n: int | None = 3,
    on_note: Callable[[str], None] | None = None,
) -> list[CaseResult]:
    """Rerank each case; an error names the case it came from.

    A case written for instruction-following models is ranked without its instruction on a model
    that takes none, and says so through ``on_note`` (the sample files mix both kinds).
    """
    results = []
    for i, case in enumerate(cases):
        name = str(case.get("name", f"case {i}"))
        case_top_n = case.get("top_n", top_n)
        note = None
        try:
            try:
                response = client.rerank(
                    case["query"], case["documents"], top_n=case_top_n, instruction=case.get("instruction")
                )
            except InstructionNotSupportedError:
                note = f"{name}: this model takes no instruction; ranked without it"
                if on_note is not None:
                    on_note(note)
                response = client.rerank(case["query"], case["documents"], top_n=case_top_n)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{name}: {exc}") from exc
        except RerankKitError as exc:
            raise RerankKitError(f"{name}: {exc}") from exc
        results.append(CaseResult(name, case["query"], response, note))
    return results

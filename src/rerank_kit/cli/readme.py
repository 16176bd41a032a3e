"""The README's model table, generated from the recipes (``rerank-kit models --markdown``)."""

from __future__ import annotations

from rerank_kit.recipes import RECIPES


def models_markdown() -> str:
    """The README's model table, generated from the recipes."""
    rows = ["| model | family | served as | score template | max len | instruction |", "|---|---|---|---|---|---|"]
    for r in RECIPES.values():
        rows.append(
            f"| `{r.model_id}` | {r.family} | {r.architecture} | {r.template or '-'} | "
            f"{r.max_model_len or '-'} | {'yes' if r.supports_instruction else '-'} |"
        )
    return "\n".join(rows)

"""The README's model table, generated from the recipes (``rerank-kit models --markdown``)."""

from __future__ import annotations

from rerank_kit.launcher.vllm import REFUSED_FAMILIES
from rerank_kit.recipes import RECIPES, Recipe


def verified(recipe: Recipe) -> str:
    """How the family's scores were checked, or why `serve`/`up` refuse it (with the vLLM issue)."""
    refusal = REFUSED_FAMILIES.get(recipe.family)
    if refusal is not None and refusal.through is None:
        return f"refused: {recipe.verified}"
    if refusal is not None:
        return f"refused on vLLM <= {refusal.through}: {recipe.verified} ({refusal.issue})"
    return recipe.verified or "-"


def models_markdown() -> str:
    """The README's model table, generated from the recipes."""
    rows = [
        "| model | family | served as | score template | max len | instruction | verified |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in RECIPES.values():
        rows.append(
            f"| `{r.model_id}` | {r.family} | {r.architecture} | {r.template or '-'} | "
            f"{r.max_model_len or '-'} | {'yes' if r.supports_instruction else '-'} | {verified(r)} |"
        )
    return "\n".join(rows)

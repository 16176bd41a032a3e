"""Shim: vLLM loads ``--middleware rerank_kit.guard.RerankKitGuard`` (rerank_kit._contract.GUARD_MIDDLEWARE),
the path in saved commands and bench results. The guard is ``rerank_kit.server.guard``."""

from rerank_kit.server.guard import RerankKitGuard

__all__ = ["RerankKitGuard"]

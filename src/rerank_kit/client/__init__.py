"""The client room: what a RAG application imports. Nothing here imports the server or the launcher.

``client`` and ``async_client`` (RerankClient, AsyncRerankClient: thin I/O twins), ``_base_client`` (what both share),
``_core`` (the wire: build, parse, chunk, merge), ``_config`` (defaults and RERANK_KIT_* reads),
``_retry`` (retry decisions, one call's budget), ``replicas`` (balancing, the model-to-replica table and
the retry loop over them), ``images`` (image documents for vision rerankers), ``_lanes`` (the async
transport), ``probe`` (health and /v1/models probes,
also used by the launcher and the bench), ``batch`` and ``files`` (cases and documents from files).

    >>> from rerank_kit.client import RerankClient
"""

from rerank_kit.client.async_client import AsyncRerankClient
from rerank_kit.client.client import RerankClient
from rerank_kit.client.images import ImageDocument

__all__ = ["AsyncRerankClient", "ImageDocument", "RerankClient"]

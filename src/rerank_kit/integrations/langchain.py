"""A LangChain document compressor backed by a rerank-kit client.

    from langchain.retrievers import ContextualCompressionRetriever
    from rerank_kit import RerankClient
    from rerank_kit.integrations.langchain import RerankKitCompressor

    compressor = RerankKitCompressor(client=RerankClient("http://127.0.0.1:8000"), top_n=5)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=vector_store.as_retriever())

Each returned Document keeps its metadata and gains ``metadata["relevance_score"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("RerankKitCompressor needs LangChain: pip install 'rerank-kit[langchain]'") from exc

from pydantic import ConfigDict

from rerank_kit.client import AsyncRerankClient, RerankClient
from rerank_kit.types import RerankResponse

SCORE_KEY = "relevance_score"


def _scored(documents: Sequence[Document], response: RerankResponse) -> list[Document]:
    return [
        Document(
            page_content=documents[r.index].page_content,
            metadata={**documents[r.index].metadata, SCORE_KEY: r.relevance_score},
            id=documents[r.index].id,
        )
        for r in response.results
    ]


class RerankKitCompressor(BaseDocumentCompressor):
    """Reranks retrieved documents with a vLLM reranker and keeps the best ``top_n``.

    Pass ``client`` for sync chains and/or ``async_client`` for async ones (``acompress_documents``
    falls back to running the sync client in a thread when no async client is given).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: RerankClient | None = None
    async_client: AsyncRerankClient | None = None
    top_n: int | None = 3
    model: str | None = None
    instruction: str | None = None

    def model_post_init(self, context: Any, /) -> None:
        if self.client is None and self.async_client is None:
            raise ValueError(
                "RerankKitCompressor needs client=RerankClient(...) or async_client=AsyncRerankClient(...)"
            )

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        if self.client is None:
            raise ValueError("compress_documents needs a sync client: pass client=RerankClient(...)")
        response = self.client.rerank(
            query,
            [d.page_content for d in documents],
            top_n=self.top_n,
            model=self.model,
            instruction=self.instruction,
            return_documents=False,
        )
        return _scored(documents, response)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if self.async_client is None:
            return await super().acompress_documents(documents, query, callbacks)
        if not documents:
            return []
        response = await self.async_client.rerank(
            query,
            [d.page_content for d in documents],
            top_n=self.top_n,
            model=self.model,
            instruction=self.instruction,
            return_documents=False,
        )
        return _scored(documents, response)

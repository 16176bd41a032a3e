"""A LlamaIndex node postprocessor backed by a rerank-kit client.

    from rerank_kit import RerankClient
    from rerank_kit.integrations.llamaindex import RerankKitPostprocessor

    reranker = RerankKitPostprocessor(client=RerankClient("http://127.0.0.1:8000"), top_n=5)
    query_engine = index.as_query_engine(similarity_top_k=50, node_postprocessors=[reranker])

Each returned node keeps its metadata; its score becomes the reranker's relevance score.
"""

from __future__ import annotations

from typing import Any

try:
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("RerankKitPostprocessor needs LlamaIndex: pip install 'rerank-kit[llamaindex]'") from exc

from pydantic import ConfigDict, Field

from rerank_kit.client import AsyncRerankClient, RerankClient
from rerank_kit.types import RerankResponse


def _texts(nodes: list[NodeWithScore]) -> list[str]:
    # What LlamaIndex's own rerankers score: the node text with its embeddable metadata.
    return [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]


def _scored(nodes: list[NodeWithScore], response: RerankResponse) -> list[NodeWithScore]:
    return [NodeWithScore(node=nodes[r.index].node, score=r.relevance_score) for r in response.results]


class RerankKitPostprocessor(BaseNodePostprocessor):
    """Reranks retrieved nodes with a vLLM reranker and keeps the best ``top_n``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: RerankClient | None = Field(default=None, exclude=True)
    async_client: AsyncRerankClient | None = Field(default=None, exclude=True)
    top_n: int | None = 3
    model: str | None = None
    instruction: str | None = None

    @classmethod
    def class_name(cls) -> str:
        return "RerankKitPostprocessor"

    def model_post_init(self, context: Any, /) -> None:
        if self.client is None and self.async_client is None:
            raise ValueError(
                "RerankKitPostprocessor needs client=RerankClient(...) or async_client=AsyncRerankClient(...)"
            )

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("RerankKitPostprocessor needs the query: pass query_bundle or query_str")
        if not nodes:
            return []
        if self.client is None:
            raise ValueError("postprocess_nodes needs a sync client: pass client=RerankClient(...)")
        response = self.client.rerank(
            query_bundle.query_str,
            _texts(nodes),
            top_n=self.top_n,
            model=self.model,
            instruction=self.instruction,
            return_documents=False,
        )
        return _scored(nodes, response)

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if self.async_client is None:
            return await super()._apostprocess_nodes(nodes, query_bundle)
        if query_bundle is None:
            raise ValueError("RerankKitPostprocessor needs the query: pass query_bundle or query_str")
        if not nodes:
            return []
        response = await self.async_client.rerank(
            query_bundle.query_str,
            _texts(nodes),
            top_n=self.top_n,
            model=self.model,
            instruction=self.instruction,
            return_documents=False,
        )
        return _scored(nodes, response)

"""Adapters for RAG frameworks. Each imports its framework lazily; install the matching extra:

pip install 'rerank-kit[langchain]'    ->  rerank_kit.integrations.langchain.RerankKitCompressor
pip install 'rerank-kit[llamaindex]'   ->  rerank_kit.integrations.llamaindex.RerankKitPostprocessor
"""

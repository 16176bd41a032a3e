"""Shim: installed distributions name ``rerank_kit.vllm_plugin:register`` as their ``vllm.general_plugins``
entry point. The plugin is ``rerank_kit.server.plugin``."""

from rerank_kit.server.plugin import register

__all__ = ["register"]

"""The server room: what runs inside a vLLM server process. Nothing here imports the client, the launcher,
the CLI or the bench (import-linter checks it), and nothing here imports httpx.

``plugin`` (the ``vllm.general_plugins`` entry point: piecewise prompts, instruction checks, default
truncation), ``prompts`` (a request's prompts built at once), ``guard`` (the ASGI middleware vLLM loads with
``--middleware``), ``bodycheck`` (its body checks), ``normalize`` (third-party request shapes),
``compat`` (the table of vLLM internals rerank-kit relies on, and ``accepts``), ``templates/`` (score templates).
"""

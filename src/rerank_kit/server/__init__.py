"""The server room: what runs inside a vLLM server process. Nothing here imports the client, the launcher,
the CLI or the bench (import-linter checks it), and nothing here imports httpx.

``plugin`` (the ``vllm.general_plugins`` entry point: piecewise prompts, only where the launcher asked, pinned
to verified vLLM code, refusing to start a piecewise recipe it cannot serve), ``checks`` (what a request is checked
for before any render; the bounded skeleton cache), ``batching`` (a request's pairs rendered at once),
``prompts`` (a request's prompts built at once; the one truncation rule), ``guard`` (the ASGI middleware vLLM
loads with ``--middleware``), ``bodycheck`` (its body checks, images' too), ``parsed_body`` (its parsed body handed to
vLLM's routes), ``normalize`` (third-party request shapes),
``compat`` (the table of vLLM internals rerank-kit relies on, their pinned bodies, ``accepts`` and ``pinned``),
``fingerprint`` (a definition's normalised-syntax hash), ``templates/`` (score templates).
"""

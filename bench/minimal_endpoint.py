"""A minimal local rerank endpoint with canned answers, for measuring load generators and clients.

It speaks vLLM's /v1/rerank, /v1/models, /version and /health, does no model work, and answers from
uvicorn with httptools, so whatever limits throughput against it is the client side.

    python bench/minimal_endpoint.py --port 8765
"""

from __future__ import annotations

import argparse
import json

STATS = {"rerank_requests": 0, "rerank_body_bytes": 0}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path in ("/v1/rerank", "/rerank"):
        STATS["rerank_requests"] += 1
        STATS["rerank_body_bytes"] += len(body)
        request = json.loads(body)
        n = len(request["documents"])
        payload = {
            "id": "rerank-min",
            "model": request.get("model") or "minimal",
            "usage": {"prompt_tokens": 10 * n, "total_tokens": 10 * n},
            "results": [
                {"index": i, "document": {"text": d}, "relevance_score": 1.0 / (i + 1)}
                for i, d in enumerate(request["documents"])
            ],
        }
    elif path == "/v1/models":
        payload = {"object": "list", "data": [{"id": "minimal", "object": "model", "max_model_len": 512}]}
    elif path == "/stats":  # what the load generators sent: compare their payload sizes
        payload = STATS
    elif path == "/version":
        payload = {"version": "minimal"}
    else:
        payload = {}
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, http="httptools")


if __name__ == "__main__":
    main()

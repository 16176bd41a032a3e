"""Image documents end to end: each vision family (a tiny jina-reranker-m0, JinaVLForRanking on Qwen2-VL; a tiny
Qwen3-VL-Reranker) served by real vLLM through rerank-kit's launcher, called through RerankClient with PIL images,
files and bytes, and its scores compared with the authors' recipe (rerank_kit.launcher.reference) on the same
images, in float32.

vLLM's vision models import torchvision. Its CPU build, like torch's, is only on PyTorch's index, and PyPI's
torchvision is a CUDA build that loads only beside PyPI's torch: this module runs where torchvision imports
(`make test-images` builds such an environment, tests/compat_env.sh with COMPAT_IMAGES=1) and is skipped elsewhere.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import httpx
import pytest

from conftest import queued_server
from rerank_kit import ImageDocument, RerankClient
from rerank_kit.errors import RequestTooLargeError
from rerank_kit.launcher import machine
from rerank_kit.launcher.reference import load_reference
from rerank_kit.launcher.selfcheck import self_check
from startup_log import Context, unexplained

try:
    import torchvision  # noqa: F401
    from PIL import Image, ImageDraw
except Exception as exc:  # ImportError, or PyPI's CUDA torchvision beside a +cpu torch (RuntimeError)
    why = f"torchvision does not import here ({exc}): `make test-images` runs this module"
    pytest.skip(why, allow_module_level=True)

pytestmark = pytest.mark.vllm

VISION_FAMILIES = ["jina-reranker-m0", "qwen3-vl-reranker"]
TOLERANCE = 1e-4  # /rerank's scores (after the sigmoid), float32, as tests/test_families.py
CONTROL_MARGIN = 100 * TOLERANCE
QUERY = "a red circle on a white page"
TEXTS = ["A red circle drawn on white paper.", "Quarterly revenue grew by 12 percent."]


def _images() -> list[Image.Image]:
    """Four small images that differ in colour, shape and size. Their sides are multiples of 32 within Qwen3-VL's
    bounds, which its reference needs (it resizes with qwen_vl_utils beforehand); jina-reranker-m0's processor
    resizes them to multiples of 28 on both sides of the comparison."""
    out = []
    for size, colour, box in (
        ((96, 64), "red", (20, 10, 70, 55)),
        ((64, 96), "blue", (5, 5, 50, 80)),
        ((128, 96), "green", (30, 20, 100, 80)),
        ((64, 64), "black", (10, 10, 40, 40)),
    ):
        image = Image.new("RGB", size, "white")
        ImageDraw.Draw(image).ellipse(box, fill=colour)
        out.append(image)
    return out


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module", params=VISION_FAMILIES)
def vision_server(request, server_queue):
    yield from queued_server(request, server_queue)


@pytest.fixture(scope="module")
def reference(vision_server):
    return load_reference(vision_server.recipe.family, vision_server.model)


def _rerank(client, documents):
    response = client.rerank(QUERY, documents)
    return [s for _, s in sorted((r.index, r.relevance_score) for r in response.results)]


def test_image_documents_match_the_reference_through_the_client(vision_server, reference, tmp_path):
    images = _images()
    path = tmp_path / "page.png"
    path.write_bytes(_png(images[1]))
    # the same images as a PIL image, a file, bytes and an ImageDocument
    documents = [images[0], path, _png(images[2]), ImageDocument.of(images[3])]
    with RerankClient(vision_server.url) as client:
        served = _rerank(client, documents)
    expected = reference.activate(reference.scores([(QUERY, image) for image in images]))
    worst = max(abs(a - b) for a, b in zip(served, expected, strict=True))
    family = vision_server.recipe.family
    print(
        f"parity {family}, 4 image documents (PIL, file, bytes, ImageDocument): max |served - reference| = {worst:.1e}"
    )
    assert worst <= TOLERANCE, (served, expected)
    # the control: the images reach the model (each image's score is its own, far from the others')
    raw = reference.scores([(QUERY, image) for image in images])
    apart = min(abs(a - b) for i, a in enumerate(raw) for b in raw[i + 1 :])
    print(f"parity {family} control: the reference's raw scores of the 4 images differ by at least {apart:.2f}")
    assert apart > CONTROL_MARGIN


def test_text_and_image_documents_mixed_in_one_call(vision_server, reference):
    image = _images()[0]
    with RerankClient(vision_server.url) as client:
        response = client.rerank(QUERY, [TEXTS[0], image, TEXTS[1]])
    served = [s for _, s in sorted((r.index, r.relevance_score) for r in response.results)]
    expected = reference.activate(reference.scores([(QUERY, TEXTS[0]), (QUERY, image), (QUERY, TEXTS[1])]))
    worst = max(abs(a - b) for a, b in zip(served, expected, strict=True))
    print(
        f"parity {vision_server.recipe.family}, text + image + text in one call: max |served - reference| = {worst:.1e}"
    )
    assert worst <= TOLERANCE, (served, expected)
    assert response.results[0].document is not None  # the caller's own objects come back, not base64
    assert {type(r.document) for r in response.results} == {str, type(image)}


def test_the_same_image_twice_is_scored_once(vision_server):
    image = _images()[2]
    with RerankClient(vision_server.url) as client:
        response = client.rerank(QUERY, [image, _png(image), TEXTS[0]])
        once = client.rerank(QUERY, [image, TEXTS[0]])
    by_index = {r.index: r.relevance_score for r in response.results}
    assert by_index[0] == by_index[1] and len(response.results) == 3
    # the server read the image once: the tokens of the request without the duplicate
    assert response.usage.prompt_tokens == once.usage.prompt_tokens > 0


def test_self_check_and_start_up_log(vision_server):
    with RerankClient(vision_server.url) as client:
        report = self_check(
            client, vision_server.recipe, tokenizer=vision_server.model, model=vision_server.command.model_name
        )
    assert report.passed, report.summary()
    text = vision_server.log.read_text(errors="replace")
    flagged = unexplained(text, Context(vision_server.command, machine.detect(), vision_server.recipe.family))
    assert not flagged, "\n".join(flagged)


def _post(server, documents):
    return httpx.post(f"{server.url}/v1/rerank", json={"query": QUERY, "documents": documents}, timeout=120)


def _inline(data: bytes) -> dict:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"content": [{"type": "image_url", "image_url": {"url": url}}]}


def test_two_images_in_one_document_where_the_model_reads_one_are_refused(vision_server):
    png = _png(_images()[0])
    two = {"content": [*_inline(png)["content"], *_inline(png)["content"]]}
    resp = _post(vision_server, [_inline(png), two])
    if not vision_server.recipe.max_images_per_text:  # Qwen3-VL reads several images per side
        assert resp.status_code == 200, resp.text
        return
    assert resp.status_code == 413, resp.text
    assert "documents[1] has 2 images" in resp.json()["error"]["message"]
    assert "at most 1 per query or document" in resp.json()["error"]["message"]


def test_the_guard_refuses_a_client_chosen_image_cache_key(vision_server):
    document = _inline(_png(_images()[0]))
    document["content"][0]["uuid"] = "another-users-image"
    resp = _post(vision_server, [document])
    assert resp.status_code == 400, resp.text
    assert "documents[0] names its image with a uuid" in resp.json()["error"]["message"]


def test_the_guard_refuses_too_many_images_and_the_client_splits_them(vision_server):
    png = _png(_images()[3])
    resp = _post(vision_server, [_inline(png)] * 101)
    assert resp.status_code == 413, resp.text
    assert "101 images in one request" in resp.json()["error"]["message"]
    # the client sends at most max_docs_per_request documents per request: 101 distinct images pass
    images = [Image.new("RGB", (56, 56), (i, 255 - i, 0)) for i in range(101)]
    with RerankClient(vision_server.url, max_docs_per_request=60) as client:
        response = client.rerank(QUERY, images)
    assert len(response.results) == 101


def test_the_guard_refuses_an_oversized_inline_image(vision_server):
    big = b"\x89PNG\r\n\x1a\n" + bytes(21 << 20)  # 21 MiB: over the 20 MiB default, under the 32 MiB body limit
    resp = _post(vision_server, [_inline(big)])
    assert resp.status_code == 413, resp.text
    message = resp.json()["error"]["message"]
    assert f"documents[0] has an image of {len(big):,} bytes" in message and "at most 20,971,520" in message
    with RerankClient(vision_server.url) as client, pytest.raises(RequestTooLargeError):
        client.rerank(QUERY, [big])


def test_the_bench_runs_an_image_workload(vision_server, tmp_path):
    out = tmp_path / "images.json"
    args = ["bench", "--url", vision_server.url, "--workload", "images:224", "--docs-per-request", "4", "--cases", "4"]
    args += ["--concurrency", "2", "--requests", "6", "--warmup", "1", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "rerank_kit.cli", *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())["summary"]  # one level: one report
    family = vision_server.recipe.family
    print(f"bench images {family}, images:224, 4 images/request, concurrency 2: {summary['pairs_per_s']:.1f} pairs/s")
    assert summary["ok"] == 6 and summary["errors"] == {} and summary["pairs_per_s"] > 0

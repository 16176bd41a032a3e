"""Image documents without a server: what the client sends for each kind of image, what the guard refuses and
says, and how the launcher serves a vision reranker. The served scores (real vLLM, parity with the authors'
recipe) are tests/test_images.py's, where torchvision imports (`make test-images`).
"""

from __future__ import annotations

import base64
import io
import json
import sys

import pytest
from PIL import Image

from rerank_kit import ImageDocument
from rerank_kit._contract import Limits
from rerank_kit.client._core import plan_rerank
from rerank_kit.errors import ConfigError, InvalidInputError
from rerank_kit.launcher import build_command
from rerank_kit.launcher.models import cap_to_model
from rerank_kit.launcher.options import ServeOptions
from rerank_kit.launcher.vllm import check_images
from rerank_kit.recipes import get_recipe
from rerank_kit.server.bodycheck import RejectedRequest, check_body


def _png(colour=(255, 0, 0), size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _url(document: dict) -> str:
    (part,) = document["content"]
    assert part["type"] == "image_url"
    return part["image_url"]["url"]


# --- the client --------------------------------------------------------------------------------------


def test_each_kind_of_image_is_sent_as_vllms_image_part(tmp_path):
    png, jpeg = _png(), io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(jpeg, format="JPEG")
    path = tmp_path / "page.jpg"
    path.write_bytes(jpeg.getvalue())
    green = _png((0, 255, 0))
    documents = ["a text", Image.open(io.BytesIO(png)), path, green, ImageDocument.of("https://example.com/p.png")]
    sent = plan_rerank("q", documents).payload(0, "m")["documents"]
    assert sent[0] == "a text"
    pil = Image.open(io.BytesIO(base64.b64decode(_url(sent[1]).removeprefix("data:image/png;base64,"))))
    assert pil.tobytes() == Image.open(io.BytesIO(png)).tobytes()  # the PIL image's pixels, re-encoded as PNG
    assert _url(sent[2]) == "data:image/jpeg;base64," + base64.b64encode(jpeg.getvalue()).decode()
    assert _url(sent[3]) == "data:image/png;base64," + base64.b64encode(green).decode()
    assert _url(sent[4]) == "https://example.com/p.png"
    assert json.loads(json.dumps(sent)) == sent  # plain JSON


def test_a_pil_image_goes_lossless_and_cmyk_becomes_rgb():
    image = Image.new("CMYK", (4, 3), (0, 255, 255, 0))
    url = ImageDocument.of(image).url
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.format == "PNG" and decoded.mode == "RGB" and decoded.size == (4, 3)
    assert decoded.getpixel((0, 0)) == image.convert("RGB").getpixel((0, 0))


def test_the_same_image_twice_is_sent_once_and_a_string_stays_text(tmp_path):
    png = _png()
    path = tmp_path / "x.png"
    path.write_bytes(png)
    plan = plan_rerank("q", [png, path, str(path), ImageDocument.of(png)])
    assert plan.owners == [[0, 1, 3], [2]]
    assert plan.unique_texts[1] == str(path)  # a str is text: wrap it (ImageDocument.of) to send the file


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"%PDF-1.7 ...", "are not a PNG, JPEG, GIF, BMP or WebP image"),
        (io.BytesIO(b"x"), "pass a string, a dict with a 'text' string"),
    ],
)
def test_what_is_not_an_image_is_refused_with_what_to_pass(document, message):
    with pytest.raises(InvalidInputError, match=message):
        plan_rerank("q", [document])


def test_image_document_errors_say_what_to_change(tmp_path):
    with pytest.raises(InvalidInputError, match=r"cannot read the image file .*missing.png"):
        ImageDocument.of(tmp_path / "missing.png")
    with pytest.raises(InvalidInputError, match="must be base64"):
        ImageDocument.of("data:image/png,rawbytes")
    with pytest.raises(InvalidInputError, match="is not an image: pass a pathlib"):
        ImageDocument.of(3.5)


# --- the guard ---------------------------------------------------------------------------------------------


def _body(*documents, query="q") -> bytes:
    return json.dumps({"model": "m", "query": query, "documents": list(documents)}).encode()


def _inline(data: bytes, n: int = 1) -> dict:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()}}
    return {"content": [part] * n}


def _refused(raw: bytes, limits: Limits) -> RejectedRequest:
    with pytest.raises(RejectedRequest) as info:
        check_body(raw, limits)
    assert info.value.status == 413
    return info.value


def test_the_guard_counts_images_per_document_and_per_request():
    png = _png()
    one_per_text = Limits(max_images_per_text=1)
    check_body(_body(_inline(png), "text", _inline(png)), one_per_text)  # one each: passes
    refused = _refused(_body("text", _inline(png, 2)), one_per_text)
    assert refused.message.startswith("documents[1] has 2 images; this model reads at most 1 per query or document")
    assert refused.param == "documents"
    query = _refused(_body("d", query=_inline(png, 3)), one_per_text)
    assert query.message.startswith("query has 3 images")
    check_body(_body(_inline(png, 2)), Limits())  # no per-text limit of the model's
    many = _refused(_body(*[_inline(png)] * 4), Limits(max_images=3))
    assert many.message.startswith("4 images in one request; this server accepts at most 3: split the documents")


def test_the_guard_refuses_client_chosen_cache_keys_and_processor_settings():
    part = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}, "uuid": "someone-elses-image"}
    with pytest.raises(RejectedRequest) as info:
        check_body(_body("text", {"content": [part]}), Limits())
    assert info.value.status == 400 and info.value.message.startswith("documents[1] names its image with a uuid")
    body = {"query": "q", "documents": ["d"], "mm_processor_kwargs": {"max_pixels": 10**9}}
    with pytest.raises(RejectedRequest) as info:
        check_body(json.dumps(body).encode(), Limits())
    assert info.value.status == 400 and "mm_processor_kwargs are this server's to set" in info.value.message


def test_the_guard_measures_an_inline_image_decoded_and_leaves_urls_to_vllm():
    for size in (2999, 3000, 3001):  # every base64 padding
        data = b"\x89PNG\r\n\x1a\n" + bytes(size - 8)
        limits = Limits(max_image_bytes=size - 1)
        refused = _refused(_body(_inline(data)), limits).message
        assert f"documents[0] has an image of {size:,} bytes; this server accepts at most {size - 1:,}" in refused
        check_body(_body(_inline(data)), Limits(max_image_bytes=size))
    url = {"content": [{"type": "image_url", "image_url": {"url": "https://example.com/huge.png"}}]}
    check_body(_body(url), Limits(max_image_bytes=1))  # fetched by vLLM, capped by VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB


# --- the launcher ----------------------------------------------------------------------------------------


def test_a_vision_reranker_is_served_with_the_authors_pixels_and_its_image_limits():
    recipe = get_recipe("jinaai/jina-reranker-m0")
    command = build_command(recipe, ServeOptions(port=9000), machine=None)
    args = list(command.argv)
    assert json.loads(args[args.index("--mm-processor-kwargs") + 1]) == {"min_pixels": 3136, "max_pixels": 602112}
    assert json.loads(args[args.index("--limit-mm-per-prompt") + 1]) == {"image": 2, "video": 0}
    assert command.env["RERANK_KIT_MAX_IMAGES_PER_TEXT"] == "1"
    assert command.env["VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB"] == "20"
    smaller = build_command(recipe, ServeOptions(port=9000, max_image_mb=2.5, max_images=10), machine=None)
    assert smaller.env["VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB"] == "3"
    limits = Limits.from_env({k: v for k, v in smaller.env.items() if isinstance(v, str)})
    assert (limits.max_images, limits.max_image_bytes, limits.max_images_per_text) == (10, int(2.5 * (1 << 20)), 1)
    older = build_command(recipe, ServeOptions(port=9000), vllm_version="0.28.0", machine=None)
    assert "VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB" not in older.env  # from vLLM 0.29 (rerank_kit.server.compat)
    qwen3_vl = build_command(get_recipe("Qwen/Qwen3-VL-Reranker-2B"), ServeOptions(port=9000), machine=None)
    argv = list(qwen3_vl.argv)
    assert json.loads(argv[argv.index("--mm-processor-kwargs") + 1]) == {"min_pixels": 4096, "max_pixels": 1843200}
    assert json.loads(argv[argv.index("--limit-mm-per-prompt") + 1]) == {"image": 999, "video": 0}
    assert "RERANK_KIT_MAX_IMAGES_PER_TEXT" not in qwen3_vl.env  # it reads several images per side
    assert argv[argv.index("--chat-template") + 1].endswith("qwen3_vl_reranker.jinja")
    text_only = build_command(get_recipe("BAAI/bge-reranker-base"), ServeOptions(port=9000), machine=None)
    assert "--limit-mm-per-prompt" not in text_only.argv and "VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB" not in text_only.env


def test_serving_a_vision_reranker_without_torchvision_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` raises ImportError
    with pytest.raises(ConfigError) as info:
        check_images("jina-reranker-m0", "jinaai/jina-reranker-m0")
    message = str(info.value)
    assert "reads images through torchvision, which does not import here" in message
    assert "https://download.pytorch.org/whl/cpu" in message and "COMPAT_IMAGES=1" in message


def test_a_vision_models_length_is_capped_by_its_language_models_positions(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 4096}}))
    assert cap_to_model(10240, str(tmp_path)) == 4096


def test_the_image_workload_is_seeded_distinct_and_sized():
    from rerank_kit.bench.workloads import load_workload

    first, again = (load_workload("images:64", docs_per_request=5, cases=3, seed=7) for _ in range(2))
    assert [c.documents for c in first.cases] == [c.documents for c in again.cases]
    urls = [d.url for c in first.cases for d in c.documents]
    assert len(set(urls)) == 15
    image = Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
    assert image.size == (64, 64) and first.name == "images"
    with pytest.raises(ConfigError, match="images:SIDE"):
        load_workload("images:big")

"""The image-embedding cache: one vision encoder run per photo, in any worker, for as long as
the case lives, on the tiny-random model and a real Redis."""

from __future__ import annotations

import copy
import dataclasses
import io
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.fernet import Fernet
from PIL import Image

from skingpt.model import preprocess
from skingpt.model.base import Request
from skingpt.model.embeddings import EmbeddingCache, embedding_key, from_bytes, to_bytes
from skingpt.model.modeling import SkinGPT
from skingpt.settings import GenerationSettings
from skingpt.store import Store

GREEDY = GenerationSettings(max_new_tokens=12, do_sample=False, max_context_tokens=512)


@pytest.fixture
def store(redis_url: str, key_prefix: str) -> Store:
    return Store.from_url(
        redis_url, prefix=key_prefix, retention_seconds=600, turn_hold_seconds=60
    )


def _worker(tiny_model: Any, store: Store, *, name: str | None = None) -> SkinGPT:
    """The tiny model's weights as a worker process holds them: its own counter and memory."""
    return SkinGPT(
        tiny_model.model,
        tiny_model.tokenizer,
        name=name or tiny_model.name,
        untrained=True,
        embedding_cache=EmbeddingCache(store),
    )


def _png(path: Path) -> bytes:
    output = io.BytesIO()
    Image.open(path).convert("RGB").save(output, format="PNG")
    return output.getvalue()


def _case(store: Store, photo: Path, conv: str = "conv-1") -> tuple[str, Image.Image]:
    """A case holding the photo, and the photo as a worker decodes it from the store."""
    case = store.start_case(conv, _png(photo))
    stored = store.load_image(case)
    assert stored is not None
    return case, Image.open(io.BytesIO(stored))


def _fields(store: Store, case: str) -> list[str]:
    raw: Any = store.client.hkeys(store.key("case", case, "embeddings"))
    return [field.decode() for field in raw]


def test_embeddings_second_call_about_a_photo_does_not_run_the_encoder(
    tiny_model: Any, store: Store, sample_photos: list[Path]
) -> None:
    model = _worker(tiny_model, store)
    case, image = _case(store, sample_photos[0])

    first = model.image_embeddings(image, case=case)
    second = model.image_embeddings(image, case=case)

    assert model.vision_encoder_runs == 1
    assert torch.equal(first, second)
    assert torch.equal(first, model.image_embeddings(image))  # the uncached path, encoded again
    assert model.vision_encoder_runs == 2
    assert len(_fields(store, case)) == 1


def test_embeddings_of_another_worker_are_reused_with_identical_greedy_answers(
    tiny_model: Any, store: Store, sample_photos: list[Path]
) -> None:
    first_worker, other_worker = _worker(tiny_model, store), _worker(tiny_model, store)
    case, image = _case(store, sample_photos[1])
    request = Request(image=image, history=(), question="What is this?", generation=GREEDY)

    (alone,) = first_worker.answer_many([request])  # no case: encoded, nothing kept
    (encoded,) = first_worker.answer_many([dataclasses.replace(request, case=case)])
    (reused,) = other_worker.answer_many([dataclasses.replace(request, case=case)])

    assert first_worker.vision_encoder_runs == 2
    assert other_worker.vision_encoder_runs == 0
    assert torch.equal(
        first_worker.image_embeddings(image, case=case),
        other_worker.image_embeddings(image, case=case),
    )
    assert alone.new_tokens > 0
    assert alone.text == encoded.text == reused.text
    assert alone.new_tokens == encoded.new_tokens == reused.new_tokens


def test_embeddings_miss_for_another_photo_model_dtype_or_preprocessing(
    tiny_model: Any,
    store: Store,
    sample_photos: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _worker(tiny_model, store)
    case, image = _case(store, sample_photos[2])
    model.image_embeddings(image, case=case)

    model.image_embeddings(Image.open(sample_photos[3]), case=case)
    assert model.vision_encoder_runs == 2

    renamed = _worker(tiny_model, store, name="another-model")
    renamed.image_embeddings(image, case=case)
    assert renamed.vision_encoder_runs == 1

    half = copy.deepcopy(tiny_model.model).to(torch.bfloat16)
    in_bf16 = SkinGPT(
        half,
        tiny_model.tokenizer,
        name=tiny_model.name,
        untrained=True,
        embedding_cache=EmbeddingCache(store),
    )
    encoded = in_bf16.image_embeddings(image, case=case)
    other_bf16 = SkinGPT(
        half,
        tiny_model.tokenizer,
        name=tiny_model.name,
        untrained=True,
        embedding_cache=EmbeddingCache(store),
    )
    reread = other_bf16.image_embeddings(image, case=case)
    assert in_bf16.vision_encoder_runs == 1 and other_bf16.vision_encoder_runs == 0
    assert reread.dtype == torch.bfloat16 and torch.equal(reread, encoded)

    monkeypatch.setattr(preprocess, "CLIP_MEAN", (0.5, 0.5, 0.5))
    newly_preprocessed = _worker(tiny_model, store)
    newly_preprocessed.image_embeddings(image, case=case)
    assert newly_preprocessed.vision_encoder_runs == 1

    assert len(_fields(store, case)) == 5  # two photos, another name, bf16, new preprocessing


def test_embeddings_go_with_forget_and_are_kept_alive_with_the_case(
    tiny_model: Any, store: Store, sample_photos: list[Path]
) -> None:
    case, image = _case(store, sample_photos[0], conv="conv-forget")
    _worker(tiny_model, store).image_embeddings(image, case=case)
    name = store.key("case", case, "embeddings")
    assert 0 < store.client.ttl(name) <= 600
    store.client.expire(name, 5)
    assert store.open_case("conv-forget") == case
    assert store.client.ttl(name) > 5

    assert store.forget("conv-forget") > 0
    assert not store.client.exists(name)
    # A job that was running when the person forgot everything does not bring them back.
    late = _worker(tiny_model, store)
    late.image_embeddings(image, case=case)
    assert late.vision_encoder_runs == 1
    assert not store.save_embedding(case, "any", b"data")
    assert not store.client.exists(name)


def test_embeddings_expire_with_the_retention(
    tiny_model: Any, redis_url: str, key_prefix: str, sample_photos: list[Path]
) -> None:
    short = Store.from_url(redis_url, prefix=key_prefix, retention_seconds=1, turn_hold_seconds=1)
    case, image = _case(short, sample_photos[0])
    _worker(tiny_model, short).image_embeddings(image, case=case)
    name = short.key("case", case, "embeddings")
    assert short.client.exists(name)
    deadline = time.monotonic() + 10
    while short.client.exists(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not short.client.exists(name)
    after = _worker(tiny_model, short)
    after.image_embeddings(image, case=case)
    assert after.vision_encoder_runs == 1


def test_embeddings_are_sealed_like_photos_when_a_key_is_set(
    tiny_model: Any, redis_url: str, key_prefix: str, sample_photos: list[Path]
) -> None:
    sealed = Store.from_url(
        redis_url,
        prefix=key_prefix,
        retention_seconds=600,
        turn_hold_seconds=60,
        encryption_key=Fernet.generate_key().decode(),
    )
    case, image = _case(sealed, sample_photos[4])
    encoded = _worker(tiny_model, sealed).image_embeddings(image, case=case)
    raw: Any = sealed.client.hvals(sealed.key("case", case, "embeddings"))
    assert len(raw) == 1 and b"dtype" not in raw[0]
    other = _worker(tiny_model, sealed)
    assert torch.equal(other.image_embeddings(image, case=case), encoded)
    assert other.vision_encoder_runs == 0


def test_embeddings_are_kept_in_the_models_dtype_and_read_back_exactly() -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        tensor = torch.randn(32, 40).to(dtype)
        data = to_bytes(tensor)
        assert len(data) < 32 * 40 * dtype.itemsize + 64
        restored = from_bytes(data)
        assert restored.dtype == dtype and torch.equal(restored, tensor)
    with pytest.raises(ValueError):
        from_bytes(to_bytes(torch.zeros(32, 40))[:-4])


def test_embedding_key_names_the_pixels_not_the_file(sample_photos: list[Path]) -> None:
    image = Image.open(sample_photos[0])
    same_pixels = Image.open(io.BytesIO(_png(sample_photos[0])))
    key = embedding_key("tiny-random", torch.float32, image)
    assert embedding_key("tiny-random", torch.float32, same_pixels) == key
    assert embedding_key("tiny-random", torch.float32, image.resize((100, 100))) != key

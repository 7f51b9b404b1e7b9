"""Image embeddings computed once per photo and shared by every worker that answers its case.

A first analysis asks the model four or five questions about one photo, and every follow-up
asks one more; each call needs the photo's 32 image embeddings, and computing them runs the
whole image path (EVA ViT-g, Q-Former, projection). :class:`EmbeddingCache` keeps them in
Redis, in the case's hash ``P:case:<case>:embeddings``, so they live and die with the
conversation (retention, ``/forget``) and any worker process or machine finds them, with a few
in this process's memory in front so the calls of one job do not even fetch them.

An entry is found only by a model of the same name and dtype, with the same preprocessing of
the same pixels (:func:`embedding_key`); anything else is a miss and is encoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict

import redis
import torch
from PIL import Image

from skingpt.model import preprocess
from skingpt.store import Store

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def preprocessing_version() -> str:
    """What :func:`skingpt.model.preprocess.pixel_values` does to a photo, as text.

    Embeddings made with another size, interpolation or normalisation are other embeddings;
    the interpolation is written here because ``pixel_values`` fixes it in code (bicubic).
    """
    return (
        f"blip2-eval/{preprocess.IMAGE_SIZE}/bicubic/"
        f"mean={','.join(map(str, preprocess.CLIP_MEAN))}/"
        f"std={','.join(map(str, preprocess.CLIP_STD))}"
    )


def embedding_key(model_name: str, dtype: torch.dtype, image: Image.Image) -> str:
    """The field of one photo's embeddings: model, dtype, preprocessing and pixel content.

    The pixels are hashed as the model reads them (RGB), with the size, so a photo decoded
    again from storage finds its entry while a re-encoded or resized one does not.
    """
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    dtype_name = str(dtype).removeprefix("torch.")
    return f"{model_name}|{dtype_name}|{preprocessing_version()}|{digest.hexdigest()}"


def to_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor as a one-line JSON header (dtype, shape) and its raw bytes, device-free."""
    dtype_name = str(tensor.dtype).removeprefix("torch.")
    if dtype_name not in _DTYPES:
        raise ValueError(f"Image embeddings in {tensor.dtype} cannot be stored.")
    header = json.dumps({"dtype": dtype_name, "shape": list(tensor.shape)})
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return header.encode() + b"\n" + flat.view(torch.uint8).numpy().tobytes()


def from_bytes(data: bytes) -> torch.Tensor:
    """The tensor :func:`to_bytes` wrote, on the CPU.

    Raises:
        ValueError: the data is not a whole tensor of a known dtype.
    """
    header, _, raw = data.partition(b"\n")
    meta = json.loads(header)
    dtype = _DTYPES[meta["dtype"]]
    shape = tuple(int(n) for n in meta["shape"])
    expected = dtype.itemsize
    for size in shape:
        expected *= size
    if len(raw) != expected:
        raise ValueError(f"{len(raw)} bytes for a {meta['dtype']} tensor of shape {shape}.")
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)


class EmbeddingCache:
    """Image embeddings by case and :func:`embedding_key`: in memory first, then in Redis.

    Args:
        store: the store that keeps the cases (photos are sealed, and so are embeddings).
        memory_entries: how many embeddings this process keeps; a job's calls are about
            one photo, so a few cover the jobs a worker answers together.

    Redis failing never fails a job: the lookup is a miss and the photo is encoded.
    """

    def __init__(self, store: Store, *, memory_entries: int = 4) -> None:
        self.store = store
        self.memory_entries = memory_entries
        self._memory: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, case: str, key: str, device: torch.device) -> torch.Tensor | None:
        """The embeddings of the photo ``key`` of ``case`` on ``device``, or None if not kept."""
        with self._lock:
            found = self._memory.get((case, key))
            if found is not None:
                self._memory.move_to_end((case, key))
                return found
        try:
            data = self.store.load_embedding(case, key)
        except redis.RedisError as error:
            logger.warning("Image embeddings not read from Redis: %s", type(error).__name__)
            return None
        if data is None:
            return None
        try:
            tensor = from_bytes(data).to(device)
        except (ValueError, KeyError) as error:
            logger.warning("Stored image embeddings are unreadable (%s); encoding again", error)
            return None
        logger.info("Image embeddings of the photo reused from Redis; vision encoder not run")
        self._remember(case, key, tensor)
        return tensor

    def put(self, case: str, key: str, tensor: torch.Tensor) -> None:
        """Keep freshly encoded embeddings here and with the case (unless the case is gone)."""
        self._remember(case, key, tensor)
        try:
            kept = self.store.save_embedding(case, key, to_bytes(tensor))
        except redis.RedisError as error:
            logger.warning("Image embeddings not saved to Redis: %s", type(error).__name__)
            return
        if not kept:
            logger.info("Image embeddings not saved: the case was deleted or expired")

    def _remember(self, case: str, key: str, tensor: torch.Tensor) -> None:
        with self._lock:
            self._memory[(case, key)] = tensor
            self._memory.move_to_end((case, key))
            while len(self._memory) > self.memory_entries:
                self._memory.popitem(last=False)

"""Download known models from the Hugging Face hub into the local cache, once, ahead of time.

Workers never download: they run with ``HF_HUB_OFFLINE=1`` and load a folder. An administrator
fetches on a machine with internet access; an interrupted download resumes when the same
command runs again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from skingpt.errors import ModelUnavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubModel:
    """A model this project knows how to use.

    Attributes:
        repo_id: the hub repository.
        use: how the project uses it once downloaded.
        gated: the hub asks users to accept a licence before downloading.
        licence: the licence as the model card states it.
    """

    repo_id: str
    use: str
    gated: bool
    licence: str


KNOWN_MODELS = {
    "medgemma-4b-it": HubModel(
        "google/medgemma-4b-it",
        "SKINGPT_WEIGHTS=<folder> (transformers backend)",
        gated=True,
        licence="Health AI Developer Foundations terms of use",
    ),
    "derm-llava-1.5-7b": HubModel(
        "ulrica/dermatology-llava-7b-v1.5-hf",
        "SKINGPT_WEIGHTS=<folder> (transformers backend)",
        gated=False,
        licence="not stated on the model card",
    ),
    "llama-2-13b-chat": HubModel(
        "meta-llama/Llama-2-13b-chat-hf",
        "skingpt weights convert --llama <folder>",
        gated=True,
        licence="Llama 2 Community License",
    ),
    "blip2-flan-t5-xxl": HubModel(
        "Salesforce/blip2-flan-t5-xxl",
        "skingpt weights convert --blip2-hub <folder> (about 48 GB, most of it Flan-T5)",
        gated=False,
        licence="MIT",
    ),
}


def fetch(
    name: str,
    *,
    revision: str | None = None,
    cache_dir: Path | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download one known model and return its local folder.

    Args:
        name: a key of :data:`KNOWN_MODELS`.
        revision: a branch, tag or commit; the default branch when None.
        cache_dir: the hub cache (default: ``HF_HOME``'s).
        token: a hub token; by default ``HF_TOKEN`` or a saved login is used.
        endpoint: another hub server (default: the real hub, or ``HF_ENDPOINT``).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    stopped: tuple[type[Exception], ...] = (HfHubHTTPError, OSError, *_network_errors())
    model = KNOWN_MODELS.get(name)
    if model is None:
        raise ModelUnavailable(f"Unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}.")
    try:
        folder = snapshot_download(
            model.repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            endpoint=endpoint,
        )
    except GatedRepoError:
        raise ModelUnavailable(
            f"{model.repo_id} is gated ({model.licence}). Log in on the hub's website, accept "
            f"the terms on the page of {model.repo_id}, create a read token, then run again "
            "with HF_TOKEN set to it."
        ) from None
    except RevisionNotFoundError:
        raise ModelUnavailable(f"{model.repo_id} has no revision {revision!r}.") from None
    except RepositoryNotFoundError:
        raise ModelUnavailable(
            f"{model.repo_id} was not found, or it needs a token that may read it (HF_TOKEN)."
        ) from None
    except stopped as error:
        raise ModelUnavailable(
            f"Downloading {model.repo_id} stopped ({type(error).__name__}: {error}). Run the "
            "same command again: finished files are kept and an unfinished one resumes."
        ) from None
    logger.info("Fetched %s into %s", model.repo_id, folder)
    return Path(str(folder))


def _network_errors() -> tuple[type[Exception], ...]:
    """Transport errors of the HTTP clients the hub library may use (httpx, or its fork)."""
    import importlib

    errors: list[type[Exception]] = []
    for module, name in (
        ("httpx", "HTTPError"),
        ("httpx2", "HTTPError"),
        ("httpcore", "ProtocolError"),
        ("httpcore2", "ProtocolError"),
        ("httpcore", "NetworkError"),
        ("httpcore2", "NetworkError"),
    ):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)

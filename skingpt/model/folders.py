"""Model folders on disk: what kind of model they hold, and whether their files are intact.

Nothing here imports torch, so the worker's parent process can check a folder before it
starts taking jobs, without touching CUDA.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from skingpt.errors import ModelUnavailable

PROVENANCE_FILE = "skingpt_weights.json"


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(16 * 2**20):
            digest.update(block)
    return digest.hexdigest()


def read_config(folder: Path) -> dict[str, Any]:
    """A model folder's ``config.json``, or a clear error."""
    if not folder.is_dir():
        raise ModelUnavailable(
            f"{folder} is not a folder; point SKINGPT_WEIGHTS at a model folder."
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelUnavailable(f"{folder} holds no config.json; point SKINGPT_WEIGHTS at a model.")
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ModelUnavailable(
            f"{config_file} is not valid JSON; fetch or convert again."
        ) from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelUnavailable(f"{config_file} names no model_type; this is not a model folder.")
    return config


def is_skingpt_folder(folder: Path) -> bool:
    """True for a SkinGPT-4 folder (BLIP-2 with a Llama); False for another model."""
    config = read_config(folder)
    text = config.get("text_config") or {}
    return bool(config.get("model_type") == "blip-2" and text.get("model_type") == "llama")


def is_native_backend(folder: Path, backend: str) -> bool:
    """Whether ``folder`` loads through transformers' auto classes rather than as SkinGPT-4.

    Args:
        folder: the model folder.
        backend: ``auto`` (decided by the folder), ``skingpt4`` or ``transformers``.

    Raises:
        ModelUnavailable: the forced backend does not fit the folder.
    """
    skingpt = is_skingpt_folder(folder)
    if backend == "transformers" and skingpt:
        raise ModelUnavailable(
            f"{folder} is a SkinGPT-4 folder; it loads with SKINGPT_BACKEND=auto or skingpt4, "
            "not transformers."
        )
    if backend == "skingpt4" and not skingpt:
        raise ModelUnavailable(
            f"{folder} is not a SkinGPT-4 folder; use SKINGPT_BACKEND=auto or transformers for it."
        )
    return not skingpt


def placement(device: Any, quantization: Any) -> dict[str, Any]:
    """``from_pretrained`` arguments: bitsandbytes loads a quantized model onto its device."""
    if quantization is None:
        return {}
    return {"quantization_config": quantization, "device_map": {"": device}}


def record_files(folder: Path, provenance: dict[str, Any]) -> None:
    """Write the provenance record with the SHA-256 of every file now in the folder."""
    provenance["files"] = {path.name: sha256(path) for path in sorted(_checked_files(folder))}
    (folder / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")


def verify_files(folder: Path, *, required: bool) -> None:
    """Check every file against the record made when the folder was written.

    Args:
        folder: the model folder.
        required: a folder without a record is refused (SkinGPT-4 folders, which only
            ``skingpt weights convert`` writes); otherwise it is accepted unchecked.

    Raises:
        ModelUnavailable: a file is missing, changed, or was added after the record.
    """
    record = folder / PROVENANCE_FILE
    if not record.is_file():
        if required:
            raise ModelUnavailable(
                f"{folder} has no {PROVENANCE_FILE}, so its files cannot be checked. Convert "
                "the weights again, or set SKINGPT_VERIFY_WEIGHTS=false to load it unchecked."
            )
        return
    try:
        recorded: dict[str, str] = json.loads(record.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise ModelUnavailable(f"{record} is damaged; convert the weights again.") from None
    present = {path.name for path in _checked_files(folder)}
    for name in sorted(present - set(recorded)):
        raise ModelUnavailable(
            f"{folder / name} was not written with this model; remove it or convert again."
        )
    for name, expected in sorted(recorded.items()):
        path = folder / name
        if not path.is_file():
            raise ModelUnavailable(f"{path} is missing; convert the weights again.")
        if sha256(path) != expected:
            raise ModelUnavailable(
                f"{path} does not match the checksum recorded at conversion: the file is "
                "damaged or was replaced. Convert the weights again."
            )


@contextlib.contextmanager
def loading_errors(folder: Path) -> Iterator[None]:
    """Turn transformers' errors about a broken folder into one line that says what to do."""
    try:
        yield
    except ModelUnavailable:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise ModelUnavailable(
            f"{folder} could not be loaded ({type(error).__name__}: {detail}). Fetch or convert "
            "the model again."
        ) from None


def _checked_files(folder: Path) -> list[Path]:
    return [
        path
        for path in folder.iterdir()
        if path.is_file() and path.name != PROVENANCE_FILE and not path.name.startswith(".")
    ]

"""Every error the project raises on purpose; each message says what to do next."""

from __future__ import annotations


class SkinGPTError(Exception):
    """Base class for the project's own errors."""


class ConfigError(SkinGPTError):
    """A setting is missing or invalid; the message names the variable to change."""


class ImageRejected(SkinGPTError):
    """An uploaded file cannot be used as a skin photo.

    Attributes:
        reason: a short machine-readable code (``empty``, ``too_large``, ``not_an_image``...).
        user_message: what to tell the person who sent it.
    """

    def __init__(self, reason: str, user_message: str) -> None:
        super().__init__(f"{reason}: {user_message}")
        self.reason = reason
        self.user_message = user_message


class ModelUnavailable(SkinGPTError):
    """The model could not be built or loaded; the message says which file or setting to fix."""

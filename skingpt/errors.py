"""Every error the project raises on purpose; each message says what to do next."""

from __future__ import annotations

from collections.abc import Callable


class SkinGPTError(Exception):
    """Base class for the project's own errors."""


class ConfigError(SkinGPTError):
    """A setting is missing or invalid; the message names the variable to change."""


class ImageRejected(SkinGPTError):
    """An uploaded file cannot be used as a skin photo.

    Attributes:
        reason: a short machine-readable code (``empty``, ``too_large``, ``not_an_image``...).
        user_message: what to tell the person who sent it (English, a catalog message id
            whose ``{names}`` are filled from ``params`` after translation).
        params: the values of those names.
    """

    def __init__(self, reason: str, user_message: str, **params: object) -> None:
        super().__init__(f"{reason}: {user_message.format(**params)}")
        self.reason = reason
        self.user_message = user_message
        self.params = params

    def tell(self, translate: Callable[[str], str]) -> str:
        """The message for the sender, in the language of ``translate``."""
        return translate(self.user_message).format(**self.params)


class ModelUnavailable(SkinGPTError):
    """The model could not be built or loaded; the message says which file or setting to fix."""


class DeadlinePassed(SkinGPTError, TimeoutError):
    """A job ran out of its time before its answer came; it is answered with an apology."""

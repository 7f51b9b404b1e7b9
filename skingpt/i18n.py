"""Interface languages: gettext catalogs compiled with Babel, one per supported language.

Fixed texts are marked with :func:`N_` where they are defined and translated where they are sent,
once the person's language is known::

    QUEUED = N_("You are number {place} in line.")
    ...
    gettext_for(language)(QUEUED).format(place=3)

English is the source language and needs no catalog. The others are read from
``skingpt/locale/<lang>/LC_MESSAGES/skingpt.mo`` through :mod:`importlib.resources`, so they load
the same from a source checkout, an installed wheel or a zip. ``python -m skingpt.catalogs``
extracts, merges, compiles and checks them.
"""

from __future__ import annotations

import functools
import gettext
import io
import logging
import struct
from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable

from skingpt.errors import SkinGPTError

logger = logging.getLogger(__name__)

SUPPORTED = ("en", "es", "fr", "ar")
DEFAULT = "en"
NATIVE_NAMES = {"en": "English", "es": "Español", "fr": "Français", "ar": "العربية"}
_RTL = frozenset({"ar"})
DOMAIN = "skingpt"
PACKAGE = "skingpt"
LOCALE_FOLDER = "locale"

Translate = Callable[[str], str]
TranslatePlural = Callable[[str, str, int], str]


class CatalogError(SkinGPTError):
    """The compiled catalog of a supported language is missing or unreadable."""


def N_(message: str) -> str:
    """Mark ``message`` for the catalogs without translating it here."""
    return message


def negotiate(code: str | None) -> str:
    """The supported language for a Telegram/IETF language tag ("es-MX" -> "es")."""
    if not code:
        return DEFAULT
    primary = code.strip().replace("_", "-").split("-", 1)[0].lower()
    return primary if primary in SUPPORTED else DEFAULT


def is_rtl(language: str) -> bool:
    """True for languages written right to left."""
    return negotiate(language) in _RTL


def catalog_path(language: str) -> str:
    """Where the compiled catalog of ``language`` lives, relative to the package."""
    return f"{LOCALE_FOLDER}/{language}/LC_MESSAGES/{DOMAIN}.mo"


def translator(language: str | None) -> gettext.NullTranslations:
    """The catalog of ``language``; English and unsupported languages get the source text.

    Raises:
        CatalogError: the ``.mo`` file of a supported language is missing or corrupt.
    """
    return _load(negotiate(language))


@functools.cache
def _load(language: str) -> gettext.NullTranslations:
    if language == DEFAULT:
        return gettext.NullTranslations()
    return load_translations(language, resources.files(PACKAGE))


def load_translations(language: str, package_root: Traversable) -> gettext.GNUTranslations:
    """Read the compiled catalog of ``language`` under ``package_root``, uncached.

    Raises:
        CatalogError: the file is missing or corrupt; the message names it.
    """
    file = package_root.joinpath(*catalog_path(language).split("/"))
    where = str(file)
    try:
        data = file.read_bytes()
    except OSError as error:
        raise CatalogError(
            f"The {language!r} interface catalog {where} cannot be read ({error}). "
            "Run `python -m skingpt.catalogs compile` to build it."
        ) from error
    try:
        catalog = gettext.GNUTranslations(io.BytesIO(data))
    except (OSError, struct.error, UnicodeDecodeError, ValueError, IndexError) as error:
        raise CatalogError(
            f"The {language!r} interface catalog {where} is corrupt ({error}). "
            "Run `python -m skingpt.catalogs compile` to rebuild it."
        ) from error
    logger.debug("Loaded the %s interface catalog", language)
    return catalog


def gettext_for(language: str | None) -> Translate:
    """A ``_()`` function for one language."""
    return translator(language).gettext


def ngettext_for(language: str | None) -> TranslatePlural:
    """An ``ngettext()`` function for one language: the form of a text that fits a count."""
    return translator(language).ngettext


def clear_cache() -> None:
    """Forget loaded catalogs, so the next use reads the ``.mo`` files again."""
    _load.cache_clear()

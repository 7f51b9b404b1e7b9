"""Maintain the interface catalogs with Babel's Python API: ``python -m skingpt.catalogs CMD``.

The usual round after texts change in the code::

    python -m skingpt.catalogs extract   # code -> skingpt/locale/skingpt.pot
    python -m skingpt.catalogs update    # .pot -> es, fr, ar .po (new texts left untranslated)
    # translate the empty msgstr entries in each .po
    python -m skingpt.catalogs compile   # .po -> .mo, what the bot reads
    python -m skingpt.catalogs check     # exits non-zero while anything is left to do

Files are written sorted, with file names but no line numbers, and only when their content
changes, so that a diff shows the texts that changed and nothing else. ``check`` is what the test
suite runs: a text added to the code without translations fails it.
"""

from __future__ import annotations

import argparse
import io
import re
import string
import struct
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from babel import Locale
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import PoFileError, read_po, write_po

from skingpt import __version__
from skingpt.i18n import DEFAULT, DOMAIN, SUPPORTED, CatalogError

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
LOCALE_DIR = PACKAGE_DIR / "locale"
MAPPING_FILE = "babel.cfg"
TEMPLATE_FILE = f"{DOMAIN}.pot"
PROJECT = "skingpt-triage"
TRANSLATED = tuple(language for language in SUPPORTED if language != DEFAULT)

# The markers the code uses: N_ for constants, _ and ngettext where a text is translated in place.
KEYWORDS: dict[str, Any] = {"N_": None, "_": None, "ngettext": (1, 2)}
# A comment starting with this, just above a marked text, reaches translators in the .po files.
COMMENT_TAGS = ("Translators:",)
_WIDTH = 99
_DATE_HEADERS = (b'"POT-Creation-Date:', b'"PO-Revision-Date:')
# A bot command as people type it: "/forget", but not the slash in "and/or" or in a path.
_COMMAND = re.compile(r"(?<![\w/])/[a-z][a-z0-9_]*\b")

MessageKey = tuple[str, str | None]


@dataclass(frozen=True)
class Problem:
    """One thing that keeps the catalogs from being complete and current."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{_shown(self.path)}: {self.message}"


def po_path(language: str, locale_dir: Path = LOCALE_DIR) -> Path:
    """The editable catalog of ``language``."""
    return locale_dir / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def mo_path(language: str, locale_dir: Path = LOCALE_DIR) -> Path:
    """The compiled catalog of ``language``, as the bot loads it."""
    return locale_dir / language / "LC_MESSAGES" / f"{DOMAIN}.mo"


def extract_template(root: Path = ROOT) -> Catalog:
    """Every marked text in the sources that ``babel.cfg`` under ``root`` lists."""
    mapping = root / MAPPING_FILE
    try:
        with mapping.open(encoding="utf-8") as config:
            # Babel ships this function without annotations.
            method_map, options_map = parse_mapping_cfg(  # type: ignore[no-untyped-call]
                config, filename=str(mapping)
            )
    except FileNotFoundError as error:
        raise CatalogError(
            f"{mapping} is missing: run this from a source checkout of {PROJECT}."
        ) from error
    template = Catalog(
        project=PROJECT,
        version=__version__,
        domain=DOMAIN,
        charset="utf-8",
        fuzzy=False,
        header_comment="# Interface texts of skingpt-triage, extracted from the code.",
    )
    found = extract_from_dir(root, method_map, options_map, KEYWORDS, COMMENT_TAGS)
    for filename, lineno, text, comments, context in found:
        template.add(text, None, [(filename, lineno)], auto_comments=comments, context=context)
    return template


def extract(root: Path = ROOT, locale_dir: Path = LOCALE_DIR) -> bool:
    """Write the template from the code; False when it was already current."""
    template = extract_template(root)
    path = locale_dir / TEMPLATE_FILE
    rendered = _render_po(template)
    if path.exists() and _without_dates(path.read_bytes()) == _without_dates(rendered):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rendered)
    return True


@dataclass(frozen=True)
class Merge:
    """What ``update`` did to one language."""

    language: str
    path: Path
    written: bool
    total: int
    untranslated: int
    obsolete: int

    def __str__(self) -> str:
        counts = f"{self.total} texts, {self.untranslated} to translate"
        if self.obsolete:
            counts += f", {self.obsolete} obsolete"
        return f"{'wrote' if self.written else 'up to date:'} {_shown(self.path)} ({counts})"


def update(
    locale_dir: Path = LOCALE_DIR,
    languages: Sequence[str] = TRANSLATED,
    *,
    drop_obsolete: bool = False,
) -> list[Merge]:
    """Merge the template into each .po: translations kept, new texts left empty.

    Texts gone from the code stay at the end of the file as obsolete ``#~`` entries, so that a
    reworded text can reuse the old translation; ``check`` flags them until they are removed
    (by hand or with ``drop_obsolete``).
    """
    template = _read_catalog(locale_dir / TEMPLATE_FILE)
    merges = []
    for language in languages:
        path = po_path(language, locale_dir)
        catalog = _read_catalog(path, language) if path.exists() else _new_catalog(language)
        # An obsolete entry whose text is back in the code is revived rather than retyped.
        for key, message in list(catalog.obsolete.items()):
            if template.get(message.id, message.context) is not None:
                catalog[message.id] = message
                del catalog.obsolete[key]
        catalog.update(template, no_fuzzy_matching=True)
        if drop_obsolete:
            catalog.obsolete.clear()
        rendered = _render_po(catalog)
        written = not path.exists() or path.read_bytes() != rendered
        if written:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rendered)
        merges.append(
            Merge(
                language,
                path,
                written,
                total=len(_entries(catalog)),
                untranslated=sum(not _is_translated(m) for m in _entries(catalog)),
                obsolete=len(catalog.obsolete),
            )
        )
    return merges


def compile_catalogs(
    locale_dir: Path = LOCALE_DIR, languages: Sequence[str] = TRANSLATED
) -> list[Path]:
    """Write each .mo from its .po (fuzzy and empty entries left out); returns those written."""
    written = []
    for language in languages:
        compiled = _compiled(_read_catalog(po_path(language, locale_dir), language))
        path = mo_path(language, locale_dir)
        if not path.exists() or path.read_bytes() != compiled:
            path.write_bytes(compiled)
            written.append(path)
    return written


def check(
    root: Path = ROOT, locale_dir: Path = LOCALE_DIR, languages: Sequence[str] = TRANSLATED
) -> list[Problem]:
    """Everything that is missing, untranslated, broken or stale; empty when all is in order."""
    code = extract_template(root)
    code_keys = {_key(message) for message in _entries(code)}
    problems = _check_template(code, locale_dir / TEMPLATE_FILE)
    for language in languages:
        path = po_path(language, locale_dir)
        if not path.exists():
            problems.append(Problem(path, "missing: run `python -m skingpt.catalogs update`"))
            continue
        try:
            catalog = _read_catalog(path, language)
        except (PoFileError, ValueError, OSError) as error:
            problems.append(Problem(path, f"cannot be read: {error}"))
            continue
        problems += _check_po(path, catalog, code, code_keys)
        problems += _check_mo(mo_path(language, locale_dir), catalog)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Run one maintenance command; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m skingpt.catalogs",
        description="Extract, merge, compile and check the interface translations.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("extract", help=f"write locale/{TEMPLATE_FILE} from the code")
    merge = commands.add_parser("update", help="merge the template into each language's .po")
    merge.add_argument(
        "--drop-obsolete",
        action="store_true",
        help="remove texts that are no longer in the code instead of keeping them as #~",
    )
    commands.add_parser("compile", help="write each .mo from its .po")
    commands.add_parser("check", help="exit 1 while any text is missing, untranslated or stale")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (CatalogError, PoFileError, OSError) as error:
        print(f"skingpt.catalogs {args.command}: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    root, locale_dir = ROOT, LOCALE_DIR  # read here, so that tests can point them elsewhere
    if args.command == "extract":
        changed = extract(root, locale_dir)
        template = locale_dir / TEMPLATE_FILE
        count = len(_entries(_read_catalog(template)))
        print(f"{'wrote' if changed else 'up to date:'} {_shown(template)} ({count} texts)")
    elif args.command == "update":
        for merge in update(locale_dir, drop_obsolete=args.drop_obsolete):
            print(merge)
    elif args.command == "compile":
        written = compile_catalogs(locale_dir)
        for language in TRANSLATED:
            path = mo_path(language, locale_dir)
            print(f"{'wrote' if path in written else 'up to date:'} {_shown(path)}")
    else:
        problems = check(root, locale_dir)
        for problem in problems:
            print(problem)
        if problems:
            print(f"{len(problems)} problem(s) in the interface catalogs.", file=sys.stderr)
            return 1
        print(f"All interface texts are translated and compiled: {', '.join(TRANSLATED)}.")
    return 0


def _check_template(code: Catalog, path: Path) -> list[Problem]:
    if not path.exists():
        return [Problem(path, "missing: run `python -m skingpt.catalogs extract`")]
    try:
        template = _read_catalog(path)
    except (PoFileError, ValueError, OSError) as error:
        return [Problem(path, f"cannot be read ({error}): run extract")]
    template_keys = {_key(message) for message in _entries(template)}
    problems = [
        Problem(path, f"{_quoted(message)} is in the code but not here: run extract")
        for message in _entries(code)
        if _key(message) not in template_keys
    ]
    code_keys = {_key(message) for message in _entries(code)}
    problems += [
        Problem(path, f"{_quoted(message)} is no longer in the code: run extract")
        for message in _entries(template)
        if _key(message) not in code_keys
    ]
    return problems


def _check_po(
    path: Path, catalog: Catalog, code: Catalog, code_keys: set[MessageKey]
) -> list[Problem]:
    problems = []
    for message in _entries(code):
        entry = catalog.get(message.id, message.context)
        if entry is None or entry.id != message.id:
            problems.append(
                Problem(path, f"{_quoted(message)} is in the code but not here: run update")
            )
    expected_plurals = Catalog(locale=catalog.locale).plural_forms
    if catalog.plural_forms != expected_plurals:
        problems.append(
            Problem(path, f"Plural-Forms is {catalog.plural_forms!r}, not {expected_plurals!r}")
        )
    for message in _entries(catalog):
        where = f"{_quoted(message)} (line {message.lineno})"
        if _key(message) not in code_keys:
            problems.append(Problem(path, f"{where} is no longer in the code: run update"))
        elif message.fuzzy:
            problems.append(Problem(path, f"{where} is marked fuzzy: review it, remove the flag"))
        elif not _is_translated(message):
            problems.append(Problem(path, f"{where} has no translation"))
        else:
            issues = _placeholder_issues(message) + _kept_token_issues(message)
            problems += [Problem(path, f"{where} {issue}") for issue in issues]
    problems += [
        Problem(
            path,
            f"obsolete entry {_quoted(message)} (line {message.lineno}): reuse its translation "
            "and delete it, or run `update --drop-obsolete`",
        )
        for message in catalog.obsolete.values()
    ]
    return problems


def _check_mo(path: Path, catalog: Catalog) -> list[Problem]:
    if not path.exists():
        return [Problem(path, "missing: run `python -m skingpt.catalogs compile`")]
    try:
        with path.open("rb") as compiled:
            current = _translations(read_mo(compiled))
    except (OSError, ValueError, struct.error, IndexError) as error:
        return [Problem(path, f"corrupt ({error}): run `python -m skingpt.catalogs compile`")]
    # Compared by content, not by date: a checkout gives every file the same age.
    if current != _translations(read_mo(io.BytesIO(_compiled(catalog)))):
        return [
            Problem(path, "out of date with its .po: run `python -m skingpt.catalogs compile`")
        ]
    return []


def _placeholder_issues(message: Message) -> list[str]:
    sources = _texts(message.id)
    targets = _texts(message.string)
    try:
        wanted = set().union(*(_placeholders(text) for text in sources))
    except ValueError:
        return []  # the source is not a format string, so it is never formatted
    issues = []
    found: set[str] = set()
    for text in targets:
        try:
            fields = _placeholders(text)
        except ValueError as error:
            issues.append(f"has a translation with broken braces ({error})")
            continue
        found |= fields
        if not message.pluralizable and fields != wanted:
            issues.append(_placeholder_difference(wanted, fields))
    # A plural form may leave the number out ("one photo"), but together they must use them all.
    if message.pluralizable and not issues and found != wanted:
        issues.append(_placeholder_difference(wanted, found))
    return issues


def _placeholder_difference(wanted: set[str], found: set[str]) -> str:
    parts = []
    if wanted - found:
        parts.append(f"lacks {', '.join(sorted(wanted - found))}")
    if found - wanted:
        parts.append(f"adds {', '.join(sorted(found - wanted))}")
    return "translation " + " and ".join(parts) + " (keep the {placeholders} of the English)"


def _kept_token_issues(message: Message) -> list[str]:
    """Commands and emoji must reach every reader as in the English: /forget is typed as is."""
    wanted = set().union(*(_kept_tokens(text) for text in _texts(message.id)))
    found = set().union(*(_kept_tokens(text) for text in _texts(message.string)))
    if wanted <= found:
        return []
    return [f"translation drops {' '.join(sorted(wanted - found))} (keep /commands and emoji)"]


def _kept_tokens(text: str) -> set[str]:
    commands = _COMMAND.findall(text)
    symbols = [char for char in text if unicodedata.category(char) == "So"]
    return {*commands, *symbols}


def _placeholders(text: str) -> set[str]:
    """The ``{name}`` fields of a ``str.format`` text, as written; ValueError if malformed."""
    fields = set()
    for _literal, name, spec, conversion in string.Formatter().parse(text):
        if name is not None:
            field = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            fields.add("{" + field + "}")
    return fields


def _entries(catalog: Catalog) -> list[Message]:
    return [message for message in catalog if message.id]


def _texts(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """The singular and plural forms of a msgid or msgstr, as a tuple."""
    if value is None:
        return ("",)
    return (value,) if isinstance(value, str) else tuple(value)


def _key(message: Message) -> MessageKey:
    ident = _texts(message.id)[0]
    return ident, message.context


def _is_translated(message: Message) -> bool:
    return all(form.strip() for form in _texts(message.string))


def _translations(catalog: Catalog) -> dict[MessageKey, Any]:
    return {_key(message): message.string for message in _entries(catalog)}


def _compiled(catalog: Catalog) -> bytes:
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    return buffer.getvalue()


def _read_catalog(path: Path, language: str | None = None) -> Catalog:
    with path.open("rb") as source:
        return read_po(source, locale=language, domain=DOMAIN, abort_invalid=True)


def _new_catalog(language: str) -> Catalog:
    name = Locale.parse(language).english_name
    return Catalog(
        locale=language,
        domain=DOMAIN,
        project=PROJECT,
        version=__version__,
        charset="utf-8",
        fuzzy=False,
        language_team=f"{name} <{PROJECT}>",
        last_translator=f"{PROJECT} maintainers",
        revision_date=datetime.now(UTC),
        header_comment=f"# {name} interface texts of {PROJECT}.",
    )


def _render_po(catalog: Catalog) -> bytes:
    buffer = io.BytesIO()
    write_po(buffer, catalog, width=_WIDTH, sort_output=True, include_lineno=False)
    return buffer.getvalue()


def _without_dates(rendered: bytes) -> list[bytes]:
    return [line for line in rendered.splitlines() if not line.startswith(_DATE_HEADERS)]


def _quoted(message: Message) -> str:
    text = _texts(message.id)[0].replace("\n", "\\n")
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    raise SystemExit(main())

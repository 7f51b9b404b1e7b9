"""Interface languages: negotiation, catalogs per language, and the catalog maintenance tool."""

from __future__ import annotations

import gettext
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from string import Formatter

import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.pofile import read_po, write_po

from skingpt import catalogs, i18n
from skingpt.i18n import (
    N_,
    CatalogError,
    gettext_for,
    is_rtl,
    load_translations,
    negotiate,
    ngettext_for,
    translator,
)
from skingpt.replies import DISCLAIMER

PACKAGE = Path(i18n.__file__).parent


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("es", "es"),
        ("es-419", "es"),
        ("pt-BR", "en"),
        ("ar-EG", "ar"),
        ("", "en"),
        (None, "en"),
        ("EN", "en"),
        ("fr_CA", "fr"),
        (" FR-ca ", "fr"),
        ("de", "en"),
    ],
)
def test_negotiate_maps_language_tags_to_supported_languages(
    code: str | None, expected: str
) -> None:
    assert negotiate(code) == expected


@pytest.mark.parametrize(
    ("language", "word"), [("es", "diagnóstico"), ("fr", "diagnostic"), ("ar", "تشخيص")]
)
def test_gettext_for_translates_the_disclaimer(language: str, word: str) -> None:
    translated = gettext_for(language)(DISCLAIMER)
    assert translated != DISCLAIMER
    assert word in translated
    assert translated.startswith("⚕️")


def test_gettext_for_regional_tag_uses_the_language_catalog() -> None:
    assert gettext_for("es-AR")(DISCLAIMER) == gettext_for("es")(DISCLAIMER)


@pytest.mark.parametrize("language", ["en", "EN-gb", "pt-BR", None])
def test_gettext_for_english_and_unsupported_return_the_source(language: str | None) -> None:
    assert gettext_for(language)(DISCLAIMER) == DISCLAIMER
    assert gettext_for(language)("Not in any catalog") == "Not in any catalog"


def test_gettext_for_unknown_text_falls_back_to_english() -> None:
    assert gettext_for("ar")("Not in any catalog") == "Not in any catalog"


def test_translator_is_loaded_once_per_language() -> None:
    assert translator("fr") is translator("fr-BE")
    assert translator("fr") is not translator("es")


def test_is_rtl_only_for_arabic() -> None:
    assert is_rtl("ar")
    assert is_rtl("ar-EG")
    assert not any(is_rtl(language) for language in ("en", "es", "fr"))


def test_n_returns_the_text_unchanged() -> None:
    assert N_("Hello {name}") == "Hello {name}"


def test_catalog_check_passes_on_the_repository() -> None:
    problems = catalogs.check()
    assert not problems, "\n".join(str(p) for p in problems)


def test_every_translation_formats_with_the_english_placeholders() -> None:
    # A translation that cannot be formatted would fail while replying to someone.
    template = _read(catalogs.LOCALE_DIR / catalogs.TEMPLATE_FILE)
    texts = [m.id for m in template if isinstance(m.id, str) and "{" in m.id]
    assert texts, "expected texts with {placeholders} in the catalogs"
    for language in catalogs.TRANSLATED:
        _ = gettext_for(language)
        for text in texts:
            names = {name for _t, name, _s, _c in Formatter().parse(text) if name}
            values = {name: f"<{name}:42>" for name in names}
            formatted = _(text).format(**values)
            assert _(text) != text, (language, text)
            assert all(value in formatted for value in values.values()), (language, formatted)


SAMPLE_TEXTS = {
    "⚕️ This is not a diagnosis.": (
        "⚕️ Esto no es un diagnóstico.",
        "⚕️ Ceci n'est pas un diagnostic.",
        "⚕️ هذا ليس تشخيصًا.",
    ),
    "Send /forget to delete everything.": (
        "Envíe /forget para borrarlo todo.",
        "Envoyez /forget pour tout effacer.",
        "أرسل الأمر /forget لحذف كل شيء.",
    ),
    "Hello, {name}.": ("Hola, {name}.", "Bonjour, {name}.", "مرحبًا يا {name}."),
    "Thank you.": ("Gracias.", "Merci.", "شكرًا لك."),
    "Goodbye.": ("Adiós.", "Au revoir.", "مع السلامة."),
}


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path]:
    """A small project with its texts translated and compiled in every language: (root, locale)."""
    root, locale = tmp_path / "project", tmp_path / "project" / "locale"
    (root / "app").mkdir(parents=True)
    (root / "babel.cfg").write_text("[python: app/**.py]\n", encoding="utf-8")
    marked = "".join(f"TEXT_{i} = N_({text!r})\n" for i, text in enumerate(SAMPLE_TEXTS))
    (root / "app" / "texts.py").write_text(marked, encoding="utf-8")
    catalogs.extract(root, locale)
    catalogs.update(locale)
    for index, language in enumerate(catalogs.TRANSLATED):
        translations = {text: forms[index] for text, forms in SAMPLE_TEXTS.items()}
        _translate(locale, language, dict(translations))
    catalogs.compile_catalogs(locale)
    assert catalogs.check(root, locale) == []
    return root, locale


def test_catalog_check_reports_a_broken_po(project: tuple[Path, Path]) -> None:
    locale = project[1]
    po = catalogs.po_path("es", locale)
    catalog = _read(po, "es")
    catalog["Thank you."].string = ""
    catalog["Hello, {name}."].string = "Hola."
    _write(po, catalog)

    problems = _problems(project)

    assert _one(problems, "'Thank you.'").endswith("has no translation")
    assert _one(problems, "'Hello, {name}.'").endswith(
        "lacks {name} (keep the {placeholders} of the English)"
    )
    assert "compile" in _one(problems, f"{catalogs.mo_path('es', locale)}: out of date")
    assert len(problems) == 3, problems
    assert all(problem.startswith(str(locale / "es")) for problem in problems)


def test_catalog_check_reports_missing_fuzzy_and_obsolete_entries(
    project: tuple[Path, Path],
) -> None:
    po = catalogs.po_path("fr", project[1])
    catalog = _read(po, "fr")
    del catalog["Goodbye."]
    catalog["Thank you."].flags.add("fuzzy")
    catalog.obsolete["An old text"] = Message("An old text", "Un vieux texte")
    _write(po, catalog)
    catalogs.compile_catalogs(project[1])

    problems = _problems(project)

    assert "in the code but not here: run update" in _one(problems, "'Goodbye.'")
    assert "marked fuzzy" in _one(problems, "'Thank you.'")
    assert "obsolete entry 'An old text'" in _one(problems, "An old text")
    assert len(problems) == 3, problems


def test_catalog_check_reports_placeholders_added_and_broken(project: tuple[Path, Path]) -> None:
    _translate(project[1], "ar", {"Thank you.": "شكرًا لك يا {name}.", "Goodbye.": "مع {السلامة."})
    catalogs.compile_catalogs(project[1])

    problems = _problems(project)

    assert "adds {name}" in _one(problems, "'Thank you.'")
    assert "broken braces" in _one(problems, "'Goodbye.'")
    assert len(problems) == 2, problems


def test_catalog_check_reports_a_dropped_command_or_emoji(project: tuple[Path, Path]) -> None:
    _translate(
        project[1],
        "es",
        {
            "Send /forget to delete everything.": "Envíe /olvidar.",
            "⚕️ This is not a diagnosis.": "No.",
        },
    )
    catalogs.compile_catalogs(project[1])

    problems = _problems(project)

    assert "drops /forget (keep /commands and emoji)" in _one(problems, "'Send /forget")
    assert "drops ⚕" in _one(problems, "This is not a diagnosis")
    assert len(problems) == 2, problems


def test_catalog_check_reports_missing_and_corrupt_mo(project: tuple[Path, Path]) -> None:
    catalogs.mo_path("es", project[1]).unlink()
    catalogs.mo_path("fr", project[1]).write_bytes(b"not a catalog")

    problems = _problems(project)

    assert "compile" in _one(problems, "es/LC_MESSAGES/skingpt.mo: missing")
    assert "compile" in _one(problems, "fr/LC_MESSAGES/skingpt.mo: corrupt")
    assert len(problems) == 2, problems


def test_catalog_check_reports_a_new_text_before_extract(project: tuple[Path, Path]) -> None:
    source = project[0] / "app" / "texts.py"
    source.write_text(source.read_text(encoding="utf-8") + 'NEW = N_("New text")\n', "utf-8")

    problems = _problems(project)

    assert "run extract" in _one(problems, f"{catalogs.TEMPLATE_FILE}: 'New text'")
    for language in catalogs.TRANSLATED:
        assert "run update" in _one(problems, f"{language}/LC_MESSAGES/skingpt.po: 'New text'")
    assert len(problems) == 4, problems


def test_catalogs_workflow_keeps_translations_and_flags_new_texts(tmp_path: Path) -> None:
    root, locale = tmp_path / "project", tmp_path / "project" / "locale"
    (root / "app").mkdir(parents=True)
    (root / "babel.cfg").write_text("[python: app/**.py]\n", encoding="utf-8")
    source = root / "app" / "texts.py"
    source.write_text('HELLO = N_("Hello, {name}.")\n', encoding="utf-8")
    (root / "app" / "not_scanned.txt").write_text('N_("Ignored")\n', encoding="utf-8")

    assert catalogs.extract(root, locale)
    assert not catalogs.extract(root, locale)  # nothing changed, nothing rewritten
    catalogs.update(locale)
    _translate(locale, "es", {"Hello, {name}.": "Hola, {name}."})

    source.write_text(
        source.read_text(encoding="utf-8")
        + "# Translators: the number of photos stored\n"
        + 'def count(n): return ngettext("{n} photo", "{n} photos", n)\n',
        encoding="utf-8",
    )
    catalogs.extract(root, locale)
    merges = {merge.language: merge for merge in catalogs.update(locale)}
    catalogs.compile_catalogs(locale)

    assert (merges["es"].total, merges["es"].untranslated) == (2, 1)
    spanish = _read(catalogs.po_path("es", locale), "es")
    assert spanish["Hello, {name}."].string == "Hola, {name}."
    assert spanish["{n} photo"].string == ("", "", "")  # CLDR: one, many (millions), other
    assert "Translators: the number of photos stored" in spanish["{n} photo"].auto_comments
    problems = [str(p) for p in catalogs.check(root, locale, ["es"])]
    assert len(problems) == 1
    assert "'{n} photo'" in problems[0]
    assert "no translation" in problems[0]

    _translate(locale, "es", {"{n} photo": ("{n} foto", "{n} fotos")})
    catalogs.compile_catalogs(locale)
    problems = [str(p) for p in catalogs.check(root, locale, ["es"])]
    assert len(problems) == 1  # the third form, for millions, is still empty
    assert "'{n} photo'" in problems[0]
    assert "no translation" in problems[0]

    _translate(locale, "es", {"{n} photo": ("{n} foto", "{n} de fotos", "{n} fotos")})
    catalogs.compile_catalogs(locale)
    assert catalogs.check(root, locale, ["es"]) == []
    with catalogs.mo_path("es", locale).open("rb") as compiled:
        loaded = gettext.GNUTranslations(compiled)
    assert loaded.gettext("Hello, {name}.").format(name="Ana") == "Hola, Ana."
    assert loaded.ngettext("{n} photo", "{n} photos", 3).format(n=3) == "3 fotos"


def test_catalogs_update_gives_arabic_six_plural_forms(tmp_path: Path) -> None:
    root, locale = tmp_path, tmp_path / "locale"
    (root / "app").mkdir()
    (root / "babel.cfg").write_text("[python: app/**.py]\n", encoding="utf-8")
    (root / "app" / "texts.py").write_text(
        'def count(n): return ngettext("{n} day", "{n} days", n)\n', encoding="utf-8"
    )
    catalogs.extract(root, locale)
    catalogs.update(locale, ["ar"])
    forms = ("لا أيام", "يوم واحد", "يومان", "{n} أيام", "{n} يومًا", "{n} يوم")
    _translate(locale, "ar", {"{n} day": forms})
    catalogs.compile_catalogs(locale, ["ar"])

    assert catalogs.check(root, locale, ["ar"]) == []
    with catalogs.mo_path("ar", locale).open("rb") as compiled:
        loaded = gettext.GNUTranslations(compiled)
    chosen = [loaded.ngettext("{n} day", "{n} days", n).format(n=n) for n in (0, 1, 2, 5, 11, 100)]
    assert chosen == ["لا أيام", "يوم واحد", "يومان", "5 أيام", "11 يومًا", "100 يوم"]


def test_catalogs_update_keeps_removed_texts_until_dropped(tmp_path: Path) -> None:
    root, locale = tmp_path, tmp_path / "locale"
    (root / "app").mkdir()
    (root / "babel.cfg").write_text("[python: app/**.py]\n", encoding="utf-8")
    source = root / "app" / "texts.py"
    source.write_text('A = N_("Old text")\nB = N_("Kept")\n', encoding="utf-8")
    catalogs.extract(root, locale)
    catalogs.update(locale, ["fr"])
    _translate(locale, "fr", {"Old text": "Ancien texte", "Kept": "Gardé"})

    source.write_text('B = N_("Kept")\n', encoding="utf-8")
    catalogs.extract(root, locale)
    catalogs.update(locale, ["fr"])
    catalogs.compile_catalogs(locale, ["fr"])
    problems = [str(p) for p in catalogs.check(root, locale, ["fr"])]
    assert len(problems) == 1
    assert "obsolete entry 'Old text'" in problems[0]

    source.write_text('A = N_("Old text")\nB = N_("Kept")\n', encoding="utf-8")
    catalogs.extract(root, locale)
    catalogs.update(locale, ["fr"])
    assert _read(catalogs.po_path("fr", locale), "fr")["Old text"].string == "Ancien texte"

    source.write_text('B = N_("Kept")\n', encoding="utf-8")
    catalogs.extract(root, locale)
    catalogs.update(locale, ["fr"], drop_obsolete=True)
    catalogs.compile_catalogs(locale, ["fr"])
    assert catalogs.check(root, locale, ["fr"]) == []


def test_catalogs_main_runs_the_whole_round(
    project: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root, locale = project
    monkeypatch.setattr(catalogs, "ROOT", root)
    monkeypatch.setattr(catalogs, "LOCALE_DIR", locale)
    source = root / "app" / "texts.py"
    source.write_text(source.read_text(encoding="utf-8") + 'NEW = N_("New text")\n', "utf-8")

    assert catalogs.main(["extract"]) == 0
    assert catalogs.main(["update"]) == 0
    assert catalogs.main(["compile"]) == 0
    assert catalogs.main(["check"]) == 1
    output = capsys.readouterr().out
    assert "(6 texts, 1 to translate)" in output
    assert output.count("'New text' (line") == 3
    assert output.count("has no translation") == 3

    for index, language in enumerate(catalogs.TRANSLATED):
        _translate(
            locale, language, {"New text": ("Texto nuevo", "Nouveau texte", "نص جديد")[index]}
        )
    assert catalogs.main(["check"]) == 1  # the .mo files are now older than the .po files
    assert catalogs.main(["compile"]) == 0
    assert catalogs.main(["check"]) == 0
    assert "All interface texts are translated" in capsys.readouterr().out


def test_load_translations_names_a_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"es/LC_MESSAGES/skingpt\.mo.*catalogs compile"):
        load_translations("es", tmp_path)
    corrupt = tmp_path / "locale" / "fr" / "LC_MESSAGES" / "skingpt.mo"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"\x00" * 40)
    with pytest.raises(CatalogError, match=r"skingpt\.mo is corrupt.*catalogs compile"):
        load_translations("fr", tmp_path)


def test_translator_loads_from_a_zipped_install(tmp_path: Path) -> None:
    # A zip has no files on disk: only importlib.resources can read the catalogs from it.
    archive = tmp_path / "site.zip"
    with zipfile.ZipFile(archive, "w") as site:
        for name in ("__init__.py", "errors.py", "i18n.py"):
            site.write(PACKAGE / name, f"skingpt/{name}")
        for mo in (PACKAGE / "locale").glob("*/LC_MESSAGES/*.mo"):
            site.write(mo, f"skingpt/{mo.relative_to(PACKAGE)}")
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(archive)!r})
        from skingpt import i18n
        assert i18n.__file__.startswith({str(archive)!r}), i18n.__file__
        print(i18n.gettext_for("ar-EG")({DISCLAIMER!r}))
        """
    )
    # -I -S: no source checkout, no site-packages, no PYTHONPATH; the zip is all there is.
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == gettext_for("ar")(DISCLAIMER)
    assert "تشخيص" in run.stdout


def test_ngettext_for_english_chooses_by_count() -> None:
    assert ngettext_for("en")("{n} photo", "{n} photos", 1) == "{n} photo"
    assert ngettext_for("pt")("{n} photo", "{n} photos", 2) == "{n} photos"


def _read(path: Path, language: str | None = None) -> Catalog:
    with path.open("rb") as source:
        return read_po(source, locale=language)


def _write(path: Path, catalog: Catalog) -> None:
    with path.open("wb") as target:
        write_po(target, catalog)


def _translate(
    locale: Path, language: str, translations: dict[str, str | tuple[str, ...]]
) -> None:
    path = catalogs.po_path(language, locale)
    catalog = _read(path, language)
    for msgid, text in translations.items():
        catalog[msgid].string = text
    _write(path, catalog)


def _problems(project: tuple[Path, Path]) -> list[str]:
    return [str(problem) for problem in catalogs.check(*project)]


def _one(problems: list[str], fragment: str) -> str:
    found = [problem for problem in problems if fragment in problem]
    assert len(found) == 1, f"{fragment!r} in {problems}"
    return found[0]

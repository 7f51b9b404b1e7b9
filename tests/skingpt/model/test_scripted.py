"""The scripted model: realistic canned answers chosen by photo, question and language."""

from __future__ import annotations

import functools
import io
import itertools
import re
import shutil
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from skingpt.errors import ConfigError
from skingpt.imaging import decode_stored, encode_png, load_image, normalise
from skingpt.model.modeling import load_model
from skingpt.model.scripted import ScriptedVLM, distance, fingerprint, load_scripted
from skingpt.pipeline import Analyzer
from skingpt.prompts import CLINICAL_QUESTIONS, Turn, in_language
from skingpt.settings import GenerationSettings, Settings

DATA = Path(__file__).parents[2] / "data"
SAMPLES = DATA / "scripted" / "samples.toml"
ABSTAIN = DATA / "scripted" / "abstain.toml"
MAX_PIXELS = 40_000_000
GENERATION = GenerationSettings(do_sample=False)
QUESTIONS = dict(CLINICAL_QUESTIONS)
PHOTOS = sorted(p for p in DATA.iterdir() if p.suffix in {".jpg", ".png"})


@pytest.fixture(scope="module")
def samples() -> ScriptedVLM:
    model = load_scripted(SAMPLES)
    model.seconds_per_answer = 0.0  # the script paces answers like a model; not needed here
    return model


@pytest.fixture(scope="module")
def abstain() -> ScriptedVLM:
    return load_scripted(ABSTAIN)


@pytest.fixture(scope="module")
def script() -> dict[str, Any]:
    """The samples script as written, to compare answers with."""
    return tomllib.loads(SAMPLES.read_text(encoding="utf-8"))


def _case(script: dict[str, Any], name: str) -> dict[str, Any]:
    return next(case for case in script["cases"] if case["name"] == name)


def _stored(data: bytes) -> Image.Image:
    """The image a worker answers about: decoded, shrunk and stored by the bot, read back."""
    image = normalise(load_image(data, max_pixels=MAX_PIXELS), max_side=1024)
    return decode_stored(encode_png(image))


@functools.cache
def _photo(name: str) -> Image.Image:
    return _stored((DATA / name).read_bytes())


def _recompressed(path: Path, side: int, quality: int) -> bytes:
    """A copy like a Telegram rendition: longer side ``side`` pixels, JPEG at ``quality``."""
    image = Image.open(path).convert("RGB")
    scale = side / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _ask(model: ScriptedVLM, image: Image.Image, question: str, **generation: Any) -> str:
    settings = GenerationSettings(do_sample=False, **generation)
    return model.answer(image, [], question, settings, seed=None).text


def test_scripted_model_is_named_after_its_script_and_labelled_untrained(
    samples: ScriptedVLM,
) -> None:
    assert samples.name == "scripted:samples"
    assert samples.untrained is True
    answer = Analyzer(samples, GENERATION).answer(
        _photo("psoriasis_01.jpg"), [], QUESTIONS["describe"]
    )
    assert answer.untrained is True
    assert answer.model_name == "scripted:samples"


@pytest.mark.parametrize(
    "photo", ["psoriasis_01.jpg", "eczema_02.jpg", "melanoma_01.jpg", "herpes_zoster_01.png"]
)
def test_scripted_answers_the_four_clinical_questions_from_the_matching_case(
    samples: ScriptedVLM, script: dict[str, Any], photo: str
) -> None:
    image = _photo(photo)
    written = _case(script, Path(photo).stem)["answers"]
    history: list[Turn] = []
    answers = []
    for key, question in CLINICAL_QUESTIONS:
        generated = samples.answer(image, history, question, GENERATION, seed=None)
        assert generated.text == written[key].strip()
        assert generated.new_tokens == len(written[key].split())
        assert generated.prompt_positions > 0
        history.append(Turn(question=question, answer=generated.text))
        answers.append(generated.text)
    assert len(set(answers)) == 4
    assert answers[2].startswith("The most likely condition is ")


def test_scripted_cause_names_the_condition_of_each_sample(samples: ScriptedVLM) -> None:
    expected = {
        "psoriasis_01.jpg": "plaque psoriasis",
        "eczema_02.jpg": "atopic dermatitis",
        "tinea_corporis_01.jpg": "tinea corporis",
        "herpes_zoster_01.png": "herpes zoster",
        "acanthosis_nigricans_01.jpg": "acanthosis nigricans",
        "melanoma_02.jpg": "melanoma",
        "melanoma_01.jpg": "melanoma",
        "nevus_01.jpg": "benign melanocytic naevus",
    }
    assert sorted(expected) == [p.name for p in PHOTOS]
    for photo, condition in expected.items():
        cause = _ask(samples, _photo(photo), QUESTIONS["cause"])
        first = cause.split(". ")[0]
        assert condition in first, photo


@pytest.mark.parametrize("side", [320, 800])
@pytest.mark.parametrize("path", PHOTOS, ids=[p.stem for p in PHOTOS])
def test_scripted_case_survives_resizing_and_jpeg_recompression(
    samples: ScriptedVLM, path: Path, side: int
) -> None:
    image = _stored(_recompressed(path, side, quality=70))
    case, away = samples.match(image)
    assert case.name == path.stem
    assert away <= samples.max_distance // 2
    original = samples.answer(_photo(path.name), [], QUESTIONS["describe"], GENERATION, seed=1)
    copy = samples.answer(image, [], QUESTIONS["describe"], GENERATION, seed=2)
    assert copy.text == original.text


def test_scripted_case_survives_exif_rotation(samples: ScriptedVLM) -> None:
    # A phone stores the pixels sideways and records the turn in EXIF; the bot turns them back.
    upright = Image.open(DATA / "tinea_corporis_01.jpg").convert("RGB")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    buffer = io.BytesIO()
    sideways.save(buffer, format="JPEG", quality=85, exif=exif)
    assert samples.match(_stored(buffer.getvalue()))[0].name == "tinea_corporis_01"
    # Without the bot's correction the sideways pixels match nothing.
    assert samples.match(sideways)[0] is samples.default


def test_scripted_different_samples_never_match_each_other(
    samples: ScriptedVLM, tmp_path: Path
) -> None:
    prints = {path.name: fingerprint(_photo(path.name)) for path in PHOTOS}
    for first, second in itertools.combinations(prints, 2):
        assert distance(prints[first], prints[second]) > samples.max_distance, (first, second)

    script = tmp_path / "one.toml"
    shutil.copy(DATA / "psoriasis_01.jpg", tmp_path / "psoriasis_01.jpg")
    script.write_text(_VALID.replace("photo.jpg", "psoriasis_01.jpg"), encoding="utf-8")
    only_psoriasis = load_scripted(script)
    for path in PHOTOS:
        if path.name == "psoriasis_01.jpg":
            continue
        for image in (_photo(path.name), _stored(_recompressed(path, 320, 70))):
            assert _ask(only_psoriasis, image, QUESTIONS["describe"]) == "The default describe."


def test_scripted_unknown_photo_gets_the_default_case(
    samples: ScriptedVLM, script: dict[str, Any]
) -> None:
    gradient = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
    for key, question in CLINICAL_QUESTIONS:
        assert _ask(samples, gradient, question) == script["default"]["answers"][key].strip()
    assert _ask(samples, gradient, "Is it contagious?").startswith("I cannot tell")


def test_scripted_followups_match_english_keywords(
    samples: ScriptedVLM, script: dict[str, Any]
) -> None:
    image = _photo("psoriasis_01.jpg")
    followups = _case(script, "psoriasis_01")["followups"]
    contagious, how_long, pregnancy = (entry["answer"].strip() for entry in followups[:3])
    assert _ask(samples, image, "Is this contagious?") == contagious
    assert _ask(samples, image, "Can my kids CATCH it from me?") == contagious
    assert _ask(samples, image, "How long will it take to go away?") == how_long
    assert _ask(samples, image, "I am pregnant, can I use the cream?") == pregnancy
    # The first matching entry wins.
    assert _ask(samples, image, "Is it contagious, and how long does it last?") == contagious
    default = _case(script, "psoriasis_01")["followup_default"].strip()
    assert _ask(samples, image, "Should I change my shampoo?") == default

    eye = _ask(samples, _photo("herpes_zoster_01.png"), "What if it reaches my eye?")
    assert "eye" in eye
    assert "same day" in eye


def test_scripted_followups_match_arabic_keywords(
    samples: ScriptedVLM, script: dict[str, Any]
) -> None:
    image = _photo("psoriasis_01.jpg")
    contagious = _case(script, "psoriasis_01")["followups"][0]
    question = "هل هذا المرض معدٍ؟"
    assert _ask(samples, image, in_language(question, "ar")) == contagious["answers"]["ar"].strip()
    assert _ask(samples, image, question) == contagious["answer"].strip()

    # Herpes zoster's eye answer has no Arabic variant: the English one is given.
    eye = _ask(
        samples, _photo("herpes_zoster_01.png"), in_language("ماذا لو وصل إلى العين؟", "ar")
    )
    assert "eye" in eye


@pytest.mark.parametrize("photo", ["psoriasis_01.jpg", "tinea_corporis_01.jpg"])
@pytest.mark.parametrize("language", ["ar", "es"])
def test_scripted_answers_in_the_language_asked_for(
    samples: ScriptedVLM, script: dict[str, Any], photo: str, language: str
) -> None:
    image = _photo(photo)
    case = _case(script, Path(photo).stem)
    for key, question in CLINICAL_QUESTIONS:
        answer = _ask(samples, image, in_language(question, language))
        assert answer == case["answers"][language][key].strip()
        assert answer != case["answers"][key].strip()
    if language == "ar":
        assert re.search("[\u0600-\u06ff]", answer)
    follow = _ask(samples, image, in_language("What else should I know?", language))
    assert follow == case["answers"][language]["followup_default"].strip()


def test_scripted_falls_back_to_english_without_a_variant(
    samples: ScriptedVLM, script: dict[str, Any]
) -> None:
    describe = QUESTIONS["describe"]
    psoriasis = _case(script, "psoriasis_01")["answers"]["describe"].strip()
    assert _ask(samples, _photo("psoriasis_01.jpg"), in_language(describe, "fr")) == psoriasis
    eczema = _case(script, "eczema_02")["answers"]["describe"].strip()
    assert _ask(samples, _photo("eczema_02.jpg"), in_language(describe, "es")) == eczema
    unknown = f"{describe} Please answer in Klingon."
    assert _ask(samples, _photo("eczema_02.jpg"), unknown) == eczema


def test_scripted_max_new_tokens_caps_the_answer(samples: ScriptedVLM) -> None:
    image = _photo("eczema_02.jpg")
    full = samples.answer(image, [], QUESTIONS["treatment"], GENERATION, seed=None)
    short = samples.answer(
        image, [], QUESTIONS["treatment"], GenerationSettings(max_new_tokens=7), seed=None
    )
    assert full.new_tokens > 7
    assert short.new_tokens == 7
    assert short.text.split() == full.text.split()[:7]
    assert full.text.startswith(short.text)
    # A cap of exactly the answer's length cuts nothing; one less drops the last word.
    exact = samples.answer(
        image,
        [],
        QUESTIONS["treatment"],
        GenerationSettings(max_new_tokens=full.new_tokens),
        seed=None,
    )
    assert (exact.text, exact.new_tokens) == (full.text, full.new_tokens)
    one_less = _ask(samples, image, QUESTIONS["treatment"], max_new_tokens=full.new_tokens - 1)
    assert one_less == full.text.rsplit(" ", 1)[0]

    looping = load_scripted(ABSTAIN)
    capped = looping.answer(
        _photo("eczema_02.jpg"),
        [],
        QUESTIONS["cause"],
        GenerationSettings(max_new_tokens=20),
        seed=None,
    )
    assert capped.new_tokens == 20
    assert len(capped.text.split()) == 20


def test_scripted_counts_each_answer_as_one_vision_encoder_run() -> None:
    model = load_scripted(SAMPLES)
    assert model.seconds_per_answer > 0
    model.seconds_per_answer = 0.0
    image = _photo("nevus_01.jpg")
    assert model.vision_encoder_runs == 0
    first = model.answer(image, [], QUESTIONS["describe"], GENERATION, seed=1)
    second = model.answer(image, [], QUESTIONS["describe"], GENERATION, seed=99)
    assert model.vision_encoder_runs == 2
    assert first.text == second.text


def test_scripted_samples_carry_the_text_later_rules_look_for(
    samples: ScriptedVLM, script: dict[str, Any]
) -> None:
    for name in ("melanoma_01.jpg", "melanoma_02.jpg"):
        analysis = " ".join(_ask(samples, _photo(name), q) for _, q in CLINICAL_QUESTIONS)
        assert "changed in size and colour" in analysis, name
        assert "irregular border" in analysis, name
    treatment = _ask(samples, _photo("eczema_02.jpg"), QUESTIONS["treatment"])
    assert "Apply hydrocortisone 1% twice a day for 7 days." in treatment
    dose = re.compile(r"\d+\s*(%|mg|ml|times a day)|twice a day", re.IGNORECASE)
    for case in script["cases"]:
        assert len(case["followups"]) >= 2, case["name"]
        if case["name"] != "eczema_02":
            assert not dose.search(case["answers"]["treatment"]), case["name"]


def test_scripted_abstain_script_misbehaves_per_photo(abstain: ScriptedVLM) -> None:
    empty = _photo("psoriasis_01.jpg")
    for _, question in CLINICAL_QUESTIONS:
        generated = abstain.answer(empty, [], question, GENERATION, seed=None)
        assert (generated.text, generated.new_tokens) == ("", 0)
    assert _ask(abstain, empty, "Is it contagious?") == ""

    for _, question in CLINICAL_QUESTIONS:
        looping = _ask(abstain, _photo("eczema_02.jpg"), question)
        _, repeats = Counter(re.findall(r"\w+(?: \w+){2}", looping)).most_common(1)[0]
        assert repeats >= 10

        denial = _ask(abstain, _photo("tinea_corporis_01.jpg"), question)
        assert "cannot see any image" in denial or "no image was shared" in denial

        off_topic = _ask(abstain, _photo("nevus_01.jpg"), question).lower()
        assert re.search(r"sauce|tomato|pasta", off_topic)
        assert not re.search(r"skin|mole|lesion", off_topic)

    normal = _ask(abstain, _photo("melanoma_01.jpg"), QUESTIONS["cause"])
    assert normal.startswith("The most likely condition is ")


_VALID = """\
[default]
followup_default = "Please ask a doctor."

[default.answers]
describe = "The default describe."
features = "The default features."
cause = "The default cause."
treatment = "The default treatment."

[[cases]]
images = ["photo.jpg"]
followup_default = "Ask a doctor."

[cases.answers]
describe = "A round plaque with thick silvery scale."
features = "The border is sharp."
cause = "The most likely condition is plaque psoriasis."
treatment = "Moisturise every day."

[cases.answers.es]
describe = "Una placa redonda."

[[cases.followups]]
when = ["contagious"]
answer = "It is not contagious."
"""


def _write(tmp_path: Path, text: str) -> Path:
    shutil.copy(DATA / "psoriasis_01.jpg", tmp_path / "photo.jpg")
    script = tmp_path / "broken.toml"
    script.write_text(text, encoding="utf-8")
    return script


def _refused(script: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_scripted(script)
    message = str(caught.value)
    assert str(script) in message
    return message


def test_load_scripted_accepts_the_minimal_script(tmp_path: Path) -> None:
    model = load_scripted(_write(tmp_path, _VALID))
    image = _photo("psoriasis_01.jpg")
    assert model.match(image)[0].name == "photo"
    assert _ask(model, image, in_language(QUESTIONS["describe"], "es")) == "Una placa redonda."
    assert _ask(model, image, QUESTIONS["cause"]).endswith("plaque psoriasis.")


def test_load_scripted_refuses_a_missing_script(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    message = _refused(missing)
    assert "SKINGPT_SCRIPT" in message


def test_load_scripted_refuses_invalid_toml(tmp_path: Path) -> None:
    message = _refused(
        _write(tmp_path, _VALID.replace('describe = "A round', "describe = A round"))
    )
    assert "TOML" in message


def test_load_scripted_refuses_a_photo_that_does_not_exist(tmp_path: Path) -> None:
    message = _refused(_write(tmp_path, _VALID.replace("photo.jpg", "lost.jpg")))
    assert "lost.jpg" in message
    assert "relative to the script" in message


@pytest.mark.parametrize("key", ["describe", "features", "cause", "treatment"])
def test_load_scripted_refuses_a_case_without_one_of_the_four_answers(
    tmp_path: Path, key: str
) -> None:
    lines = _VALID.splitlines()
    case_start = lines.index("[[cases]]")
    missing = next(i for i, line in enumerate(lines) if i > case_start and line.startswith(key))
    del lines[missing]
    message = _refused(_write(tmp_path, "\n".join(lines)))
    assert repr(key) in message
    assert "'photo'" in message


def test_load_scripted_refuses_a_default_without_an_answer(tmp_path: Path) -> None:
    message = _refused(_write(tmp_path, _VALID.replace('cause = "The default cause."\n', "")))
    assert "[default]" in message
    assert "'cause'" in message


def test_load_scripted_refuses_a_script_without_a_default(tmp_path: Path) -> None:
    text = _VALID[_VALID.index("[[cases]]") :]
    message = _refused(_write(tmp_path, text))
    assert "[default]" in message


def test_load_scripted_refuses_misspelled_keys(tmp_path: Path) -> None:
    message = _refused(
        _write(tmp_path, _VALID.replace("[[cases.followups]]", "[[cases.folowups]]"))
    )
    assert "folowups" in message
    message = _refused(
        _write(tmp_path, _VALID.replace("[cases.answers.es]", "[cases.answers.de]"))
    )
    assert "de" in message


def test_load_scripted_refuses_a_followup_without_keywords(tmp_path: Path) -> None:
    message = _refused(_write(tmp_path, _VALID.replace('when = ["contagious"]', "when = []")))
    assert "when" in message


def test_load_scripted_refuses_two_cases_with_the_same_photo(tmp_path: Path) -> None:
    second_case = _VALID[_VALID.index("[[cases]]") :].replace("images", 'name = "again"\nimages')
    message = _refused(_write(tmp_path, _VALID + "\n" + second_case))
    assert "'photo'" in message
    assert "'again'" in message


def test_load_model_builds_the_scripted_model_only_when_allowed() -> None:
    model = load_model(Settings(model="scripted", script=str(SAMPLES), allow_scripted_model=True))
    assert isinstance(model, ScriptedVLM)
    assert model.name == "scripted:samples"
    with pytest.raises(ConfigError, match="SKINGPT_ALLOW_SCRIPTED_MODEL"):
        Settings(model="scripted")
    with pytest.raises(ConfigError, match="SKINGPT_ALLOW_SCRIPTED_MODEL"):
        Settings(model="scripted", script=str(SAMPLES))


def test_load_model_reports_a_missing_script(tmp_path: Path) -> None:
    settings = Settings(
        model="scripted", script=str(tmp_path / "gone.toml"), allow_scripted_model=True
    )
    with pytest.raises(ConfigError, match=r"gone\.toml"):
        load_model(settings)


def _with_case_settings(tmp_path: Path, settings: str) -> Path:
    lines = _VALID.splitlines()
    after_images = next(i for i, line in enumerate(lines) if line.startswith("images")) + 1
    lines[after_images:after_images] = settings.splitlines()
    return _write(tmp_path, "\n".join(lines))


@pytest.mark.parametrize(
    ("fault", "error", "says"),
    [
        ("oom", "OutOfMemoryError", "CUDA out of memory"),
        ("nan", "RuntimeError", "`inf`, `nan`"),
    ],
)
def test_scripted_fault_fails_every_answer_about_its_photo_as_a_model_would(
    tmp_path: Path, fault: str, error: str, says: str
) -> None:
    model = load_scripted(_with_case_settings(tmp_path, f'fault = "{fault}"'))
    with pytest.raises(Exception) as caught:
        _ask(model, _photo("psoriasis_01.jpg"), QUESTIONS["describe"])
    assert type(caught.value).__name__ == error
    assert says in str(caught.value)
    # Another photo gets the default case, which has no fault.
    assert _ask(model, _photo("melanoma_01.jpg"), QUESTIONS["describe"])


def test_scripted_exit_fault_ends_the_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = _with_case_settings(tmp_path, 'fault = "exit"')
    code = (
        "import sys; from pathlib import Path; from PIL import Image\n"
        "from skingpt.model.scripted import load_scripted\n"
        "from skingpt.settings import GenerationSettings\n"
        f"model = load_scripted(Path({str(script)!r}))\n"
        f"model.answer(Image.open({str(DATA / 'psoriasis_01.jpg')!r}).convert('RGB'), [], "
        "'Describe it.', GenerationSettings(do_sample=False), seed=None)\n"
        "print('still running')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1, result.stderr
    assert "still running" not in result.stdout


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ('fault = "segfault"', "must be one of oom, nan, exit"),
        ("seconds_per_answer = -1", "seconds_per_answer"),
        ('seconds_per_answer = "slow"', "seconds_per_answer"),
    ],
)
def test_load_scripted_refuses_an_unknown_fault_or_speed(
    tmp_path: Path, settings: str, says: str
) -> None:
    assert says in _refused(_with_case_settings(tmp_path, settings))


def test_scripted_case_speed_overrides_the_scripts(tmp_path: Path) -> None:
    import time

    model = load_scripted(_with_case_settings(tmp_path, "seconds_per_answer = 0.3"))
    started = time.monotonic()
    _ask(model, _photo("psoriasis_01.jpg"), QUESTIONS["describe"])
    assert time.monotonic() - started >= 0.3

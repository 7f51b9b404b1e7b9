"""Red flags: every rule fires in every language on plain and inflected wording, stays quiet when
negated, and still fires when the negation belongs to another clause."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from importlib import resources
from typing import Any, NamedTuple

import pytest

from skingpt.redflags import (
    LANGUAGES,
    RULE_IDS,
    Urgency,
    compile_terms,
    find_red_flags,
    normalise,
    red_flags_in_case,
    vocabulary,
)


class Case(NamedTuple):
    rule: str
    language: str
    plain: str
    inflected: str  # plural, past tense, other gender, Arabic attached prefixes, no accents
    negated: str  # must not fire
    other_clause: str  # a negation just before, but in the previous clause: fires


CASES = [
    # fever together with a rash that spreads or hurts
    Case(
        "fever_spreading_rash",
        "en",
        "My son has a fever and a rash that is spreading.",
        "She was feverish yesterday and the rashes spread to her legs and hurt.",
        "He has no fever and the rash is spreading.",
        "No cough, but a fever and the rash is spreading.",
    ),
    Case(
        "fever_spreading_rash",
        "es",
        "Mi hijo tiene fiebre y un sarpullido que se extiende.",
        "Tuvo FIEBRES altas y una erupcion dolorosa en el pecho.",
        "No tiene fiebre y el sarpullido se extiende.",
        "No tose, pero tiene fiebre y el sarpullido se extiende.",
    ),
    Case(
        "fever_spreading_rash",
        "fr",
        "Mon fils a de la fièvre et une éruption qui s'étend.",
        "Elle était fiévreuse et les boutons se sont étendus sur les jambes.",
        "Il n'a pas de fièvre et l'éruption s'étend.",
        "Il ne tousse pas, mais fièvre et éruption qui s'étend depuis hier.",
    ),
    Case(
        "fever_spreading_rash",
        "ar",
        "ابني عنده حمى وطفح جلدي ينتشر.",
        "أصيبت ابنتي بالحمّى والطفح انتشر على جسمها.",
        "لا توجد حمى والطفح ينتشر.",
        "لا سعال، لكن حمى وطفح ينتشر.",
    ),
    # blistering or peeling skin with mouth, eye or genital involvement
    Case(
        "blistering_mucosa",
        "en",
        "He has blisters on his skin and sores in his mouth.",
        "Her skin blistered and peeled, and her eyes are red and sore.",
        "Blisters on the hands, without any mouth sores.",
        "No fever, but blisters on the skin and sores in the mouth.",
    ),
    Case(
        "blistering_mucosa",
        "es",
        "Tiene ampollas en la piel y llagas en la boca.",
        "La piel se le despegaba y tenía los ojos rojos.",
        "Tiene ampollas en las manos, sin llagas en la boca.",
        "No tiene fiebre, pero ampollas en la piel y llagas en la boca.",
    ),
    Case(
        "blistering_mucosa",
        "fr",
        "Il a des cloques sur la peau et des plaies dans la bouche.",
        "Sa peau s'est décollée et ses yeux sont rouges.",
        "Des cloques sur les mains, sans lésions dans la bouche.",
        "Sans fièvre, mais cloques et plaies dans la bouche.",
    ),
    Case(
        "blistering_mucosa",
        "ar",
        "عنده فقاعات على الجلد وتقرحات في الفم.",
        "ظهرت فقاعات على جلده، وبفمه تقرحات، وعيناها ملتهبتان.",
        "فقاعات على اليدين بدون تقرحات في الفم.",
        "لا حمى، لكن فقاعات وتقرحات في الفم.",
    ),
    # swelling of the face, lips or tongue, or trouble breathing, with a rash
    Case(
        "swelling_breathing",
        "en",
        "His lips are swollen and he has hives.",
        "Her face swelled up and she was wheezing after the rash appeared.",
        "She has hives but no swelling of the lips or face and no trouble breathing.",
        "No fever, but his lips are swollen and he has hives.",
    ),
    Case(
        "swelling_breathing",
        "es",
        "Tiene los labios hinchados y ronchas.",
        "Se le hinchó la cara y le costaba respirar tras la picadura.",
        "Tiene ronchas, pero no tiene la cara hinchada ni dificultad para respirar.",
        "No hay fiebre, pero labios hinchados y ronchas.",
    ),
    Case(
        "swelling_breathing",
        "fr",
        "Ses lèvres sont gonflées et il a de l'urticaire.",
        "Son visage a enflé et elle avait du mal à respirer après la piqûre.",
        "Il a de l'urticaire, mais pas de gonflement du visage ni de gêne pour respirer.",
        "Sans fièvre, mais lèvres gonflées et urticaire.",
    ),
    Case(
        "swelling_breathing",
        "ar",
        "تورم في الشفتين وطفح جلدي.",
        "تورمت شفتاه وصار يختنق بعد لسعة نحلة.",
        "عنده طفح لكن لا يوجد تورم في الوجه ولا صعوبة في التنفس.",
        "لا حمى، لكن تورم في الشفتين وطفح.",
    ),
    # purple spots that do not fade when pressed, with fever
    Case(
        "purple_spots_fever",
        "en",
        "He has purple spots that do not fade when pressed, and a fever.",
        "Tiny dark red spots appeared that didn't fade under a glass, and she was feverish.",
        "Purple spots on the legs, but no fever.",
        "No cough, but fever and purple spots that do not fade.",
    ),
    Case(
        "purple_spots_fever",
        "es",
        "Tiene manchas moradas que no desaparecen al presionar y fiebre.",
        "Le salieron petequias y estaba febril.",
        "Tiene manchas moradas en las piernas, pero no tiene fiebre.",
        "No tose, pero fiebre y manchas moradas que no desaparecen al presionar.",
    ),
    Case(
        "purple_spots_fever",
        "fr",
        "Il a des taches violacées qui ne s'effacent pas à la pression et de la fièvre.",
        "Des pétéchies sont apparues et elle était fébrile.",
        "Des taches violacées sur les jambes, mais pas de fièvre.",
        "Sans toux, mais fièvre et taches violacées.",
    ),
    Case(
        "purple_spots_fever",
        "ar",
        "بقع أرجوانية لا تختفي عند الضغط مع حمى.",
        "ظهرت بقع بنفسجية على ساقيه وارتفعت حرارته.",
        "بقع أرجوانية على الساقين لكن لا توجد حمى.",
        "لا سعال، لكن حمى وبقع أرجوانية.",
    ),
    # red, hot, painful skin that spreads
    Case(
        "spreading_red_skin",
        "en",
        "The red area on his leg is spreading, hot and painful.",
        "The redness spread overnight and the skin feels warm and hurts.",
        "The red patch is not spreading and it is not hot or painful.",
        "No fever, but the red area is spreading and hot.",
    ),
    Case(
        "spreading_red_skin",
        "es",
        "La zona roja de la pierna se extiende, está caliente y duele.",
        "El enrojecimiento creció durante la noche y la piel está calientita y dolorida.",
        "La mancha roja no se extiende, no está caliente ni duele.",
        "Sin fiebre, pero se extiende, roja y caliente.",
    ),
    Case(
        "spreading_red_skin",
        "fr",
        "La zone rouge sur la jambe s'étend, elle est chaude et douloureuse.",
        "La rougeur s'est étendue pendant la nuit et la peau est chaude et fait mal.",
        "La plaque rouge ne s'étend pas et elle n'est ni chaude ni douloureuse.",
        "Sans fièvre, mais rouge, chaude et qui s'étend.",
    ),
    Case(
        "spreading_red_skin",
        "ar",
        "احمرار في الساق ينتشر والجلد ساخن ومؤلم.",
        "الاحمرار امتد خلال الليل والجلد دافئ ويؤلمه.",
        "الاحمرار لا ينتشر وليس ساخنًا ولا مؤلمًا.",
        "لا حمى، لكن احمرار ينتشر والجلد ساخن.",
    ),
    # a rash, blisters or shingles on or around the eye, or on the tip of the nose
    Case(
        "rash_near_eye",
        "en",
        "There is a rash on his eyelid.",
        "Shingles blisters appeared around her eyes and on the tip of her nose.",
        "He has shingles on his back, not near the eye.",
        "No fever, but a rash on the eyelid.",
    ),
    Case(
        "rash_near_eye",
        "es",
        "Tiene un sarpullido en el párpado.",
        "Le salieron ampollas de culebrilla alrededor de los ojos y en la punta de la nariz.",
        "Tiene culebrilla en la espalda, no en el ojo.",
        "No tiene fiebre, pero sarpullido en el párpado.",
    ),
    Case(
        "rash_near_eye",
        "fr",
        "Il a une éruption sur la paupière.",
        "Des cloques de zona sont apparues autour des yeux et sur le bout du nez.",
        "Il a un zona dans le dos, pas près de l'œil.",
        "Sans fièvre, mais éruption sur la paupière.",
    ),
    Case(
        "rash_near_eye",
        "ar",
        "طفح جلدي على الجفن.",
        "ظهرت فقاعات الحزام الناري حول عينيها وعلى طرف الأنف.",
        "عنده حزام ناري في الظهر وليس قرب العين.",
        "لا حمى، لكن طفح على الجفن.",
    ),
    # a baby or small child with signs of infection
    Case(
        "child_infection",
        "en",
        "My baby has a fever.",
        "Our 8-month-old was very sleepy and her cut is oozing pus.",
        "My toddler has a rash, no fever and no pus.",
        "No rash, but my baby has a fever.",
    ),
    Case(
        "child_infection",
        "es",
        "Mi bebé tiene fiebre.",
        "Mi niña de 2 años estaba muy decaída y la herida supuraba.",
        "Mi bebé tiene un sarpullido, sin fiebre y sin pus.",
        "Sin sarpullido, pero mi bebé tiene fiebre.",
    ),
    Case(
        "child_infection",
        "fr",
        "Mon bébé a de la fièvre.",
        "Notre nourrisson était très somnolent et ne tète plus.",
        "Mon enfant a une éruption, sans fièvre et sans pus.",
        "Pas de boutons, mais bébé a de la fièvre.",
    ),
    Case(
        "child_infection",
        "ar",
        "طفلي عنده حمى.",
        "الرضيعة مصابة بالحمى وخاملة ولا ترضع.",
        "طفلي عنده طفح، بدون حمى ولا صديد.",
        "لا طفح، لكن طفلي عنده حمى.",
    ),
    # a mole or dark spot that changes
    Case(
        "changing_mole",
        "en",
        "My mole has grown.",
        "The moles on her back got darker and one bled last week.",
        "The mole has not changed and does not bleed.",
        "No pain, but my mole has grown.",
    ),
    Case(
        "changing_mole",
        "es",
        "Mi lunar ha crecido.",
        "Los lunares de la espalda cambiaron de color y uno sangró.",
        "El lunar no ha cambiado y no sangra.",
        "No duele, pero el lunar ha crecido.",
    ),
    Case(
        "changing_mole",
        "fr",
        "Mon grain de beauté a grossi.",
        "Les grains de beauté ont changé de couleur et l'un a saigné.",
        "Le grain de beauté n'a pas changé et ne saigne pas.",
        "Pas de douleur, mais grain de beauté qui a grossi.",
    ),
    Case(
        "changing_mole",
        "ar",
        "الشامة كبرت.",
        "شاماتها تغيرت وأصبحت أغمق، وإحداها نزفت.",
        "الشامة لم تتغير ولا تنزف.",
        "لا ألم، لكن الشامة كبرت.",
    ),
    # shingles: antivirals work best when started within three days
    Case(
        "shingles",
        "en",
        "I think it is shingles.",
        "The doctor said Herpes Zoster last year and now it looks the same.",
        "It is not shingles.",
        "Not chickenpox, but shingles on the chest.",
    ),
    Case(
        "shingles",
        "es",
        "Creo que es culebrilla.",
        "Dicen que es un herpes zoster en el pecho.",
        "No es culebrilla.",
        "No es varicela, pero sí herpes zóster.",
    ),
    Case(
        "shingles",
        "fr",
        "Je crois que c'est un zona.",
        "Le médecin a parlé d'un herpès zoster, et les zonas reviennent.",
        "Ce n'est pas un zona.",
        "Pas de varicelle, mais un zona sur le thorax.",
    ),
    Case(
        "shingles",
        "ar",
        "أظن أنه الحزام الناري.",
        "قال الطبيب إنه هربس نطاقي وبالحزام الناري يتألم.",
        "ليس الحزام الناري.",
        "ليس جدري الماء، لكن الحزام الناري على الصدر.",
    ),
]

BENIGN = {
    "en": "A small itchy patch on my arm for a week.",
    "es": "Una pequeña mancha que pica en el brazo desde hace una semana.",
    "fr": "Une petite plaque qui gratte sur le bras depuis une semaine.",
    "ar": "بقعة صغيرة تسبب حكة على ذراعي منذ أسبوع.",
}


def _case_id(case: Case) -> str:
    return f"{case.rule}-{case.language}"


def _fired(text: str, language: str) -> list[str]:
    return [flag.rule for flag in find_red_flags(text, language)]


def test_cases_cover_every_rule_in_every_language() -> None:
    assert {(case.rule, case.language) for case in CASES} == {
        (rule, language) for rule in RULE_IDS for language in LANGUAGES
    }


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_find_red_flags_fires_on_plain_wording(case: Case) -> None:
    flags = {flag.rule: flag for flag in find_red_flags(case.plain, case.language)}
    assert case.rule in flags
    assert (
        flags[case.rule].advice
        == vocabulary(case.language).rules[RULE_IDS.index(case.rule)].advice
    )


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_find_red_flags_fires_on_inflected_wording(case: Case) -> None:
    assert case.rule in _fired(case.inflected, case.language)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_find_red_flags_ignores_negated_terms(case: Case) -> None:
    assert case.rule not in _fired(case.negated, case.language)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_find_red_flags_fires_when_the_negation_is_in_another_clause(case: Case) -> None:
    assert case.rule in _fired(case.other_clause, case.language)


def test_find_red_flags_keeps_a_mention_after_a_negated_one() -> None:
    text = "no fever yesterday, but today a fever and the rash spreads"
    assert _fired(text, "en") == ["fever_spreading_rash"]


NEGATION_STOPS = {
    "en": "No fever and the redness is spreading and hot.",
    "es": "No hay fiebre y se extiende, roja y caliente.",
    "fr": "Pas de fièvre et rougeur qui s'étend, chaude.",
    "ar": "لا توجد حمى والاحمرار ينتشر والجلد ساخن.",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_find_red_flags_ends_a_negation_at_and(language: str) -> None:
    assert _fired(NEGATION_STOPS[language], language) == ["spreading_red_skin"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_find_red_flags_finds_nothing_in_a_benign_description(language: str) -> None:
    assert find_red_flags(BENIGN[language], language) == []


NEGATED_FEVER = {
    "en-no": ("en", "No fever, and the rash is spreading."),
    "en-without": ("en", "Without fever; the rash is spreading."),
    "en-has-not-had": ("en", "She has not had a fever and the rash is spreading."),
    "es-sin": ("es", "Sin fiebre, y el sarpullido se extiende."),
    "es-no-tiene": ("es", "No tiene fiebre y el sarpullido se extiende."),
    "fr-pas-de": ("fr", "Pas de fièvre, et l'éruption s'étend."),
    "fr-sans": ("fr", "Sans fièvre ; l'éruption s'étend."),
    "fr-n-a-pas": ("fr", "Il n'a pas de fièvre et l'éruption s'étend."),
    "ar-la-tujad": ("ar", "لا توجد حمى والطفح ينتشر."),
    "ar-bidun": ("ar", "بدون حمى والطفح ينتشر."),
    "ar-laysa": ("ar", "ليس لديه حمى والطفح ينتشر."),
    "ar-ma-indahu": ("ar", "ما عنده حرارة والطفح ينتشر."),
}


@pytest.mark.parametrize(("language", "text"), NEGATED_FEVER.values(), ids=NEGATED_FEVER.keys())
def test_find_red_flags_reads_each_languages_negation_cues(language: str, text: str) -> None:
    assert "fever_spreading_rash" not in _fired(text, language)
    # The same words with the negation taken out do fire: it is the negation that counts.
    affirmed = {
        "en": "A fever, and the rash is spreading.",
        "es": "Con fiebre, y el sarpullido se extiende.",
        "fr": "De la fièvre, et l'éruption s'étend.",
        "ar": "عنده حمى والطفح ينتشر.",
    }
    assert "fever_spreading_rash" in _fired(affirmed[language], language)


EVERYDAY_WORDING = {
    "en-hay-fever": ("en", "I have hay fever and hives that are spreading.", []),
    "es-fiebre-del-heno": ("es", "Tengo fiebre del heno y ronchas que se extienden.", []),
    "en-daughter": ("en", "My daughter has a fever.", ["child_infection"]),
    "en-3-year-old": ("en", "My 3-year-old has pus in a cut.", ["child_infection"]),
    "en-keep-an-eye": ("en", "I will keep an eye on the rash.", []),
    "en-hot-swollen-baby": ("en", "The baby's finger is hot and swollen.", ["child_infection"]),
    "en-cant-breathe": ("en", "He can't breathe and has hives.", ["swelling_breathing"]),
    "en-doesnt-fade": (
        "en",
        "The rash doesn't fade when I press a glass on it and she has a high temperature.",
        ["purple_spots_fever"],
    ),
    "en-fever-in-degrees": (
        "en",
        "Rash spreading fast, temperature 39.2°C.",
        ["fever_spreading_rash"],
    ),
}


@pytest.mark.parametrize(
    ("language", "text", "rules"), EVERYDAY_WORDING.values(), ids=EVERYDAY_WORDING.keys()
)
def test_find_red_flags_reads_everyday_wording(language: str, text: str, rules: list[str]) -> None:
    assert _fired(text, language) == rules


def test_find_red_flags_is_blind_to_case_accents_and_arabic_diacritics() -> None:
    spanish = _fired("Tiene fiebre y la erupción se extiende.", "es")
    assert spanish == _fired("TIENE FIEBRE Y LA ERUPCION SE EXTIENDE", "es") != []
    french = _fired("Il a de la fièvre et l'éruption s'étend.", "fr")
    assert french == _fired("IL A DE LA FIEVRE ET L’ERUPTION S’ETEND", "fr") != []
    arabic = _fired("طفلي عنده حمى", "ar")
    assert arabic == _fired("طِفْلِي عِنْدَهُ حُمّـــى", "ar") == ["child_infection"]


def test_find_red_flags_reads_arabic_indic_digits_and_letter_variants() -> None:
    three = chr(0x0663)  # Arabic-Indic digit three
    assert _fired(f"عمره {three} أشهر وعنده حمى", "ar") == ["child_infection"]
    assert _fired("عمرة 3 اشهر وعندة حمي", "ar") == ["child_infection"]
    assert _fired(f"عمره {three} سنوات وعنده حمى", "ar") == ["child_infection"]
    assert _fired(f"عمره 1{three} سنة وعنده حمى", "ar") == []  # thirteen: not a small child


def test_normalise_folds_what_people_type_differently() -> None:
    assert normalise("FIÈVRE Ñandú") == "fievre nandu"
    assert normalise("l’œil, don't, 3-year-old") == "l oeil, don t, 3 year old"
    forty_two = chr(0x0664) + chr(0x0662)
    assert normalise(f"أُمّ إِلى آخر مدرسة ـمستشفى {forty_two}") == "ام الي اخر مدرسه مستشفي 42"


def test_find_red_flags_falls_back_to_english_for_an_unknown_language() -> None:
    flags = find_red_flags("My baby has a fever.", "de")
    assert [flag.rule for flag in flags] == ["child_infection"]
    assert flags[0].advice == vocabulary("en").rules[RULE_IDS.index("child_infection")].advice


def test_find_red_flags_reads_the_language_of_a_regional_tag() -> None:
    flags = find_red_flags("Mi bebé tiene fiebre.", "es-MX")
    assert flags[0].advice == vocabulary("es").rules[RULE_IDS.index("child_infection")].advice


def test_find_red_flags_puts_the_most_urgent_first() -> None:
    text = "My mole has grown. He has a fever and purple spots that do not fade when pressed."
    flags = find_red_flags(text, "en")
    # Spots, a fever and something growing also make a spreading rash with fever.
    assert [flag.rule for flag in flags] == [
        "purple_spots_fever",
        "fever_spreading_rash",
        "changing_mole",
    ]
    assert [flag.urgency for flag in flags] == [Urgency.EMERGENCY, Urgency.TODAY, Urgency.SOON]


def test_red_flags_in_case_reads_english_model_output_for_a_spanish_user() -> None:
    flags = red_flags_in_case(
        ["¿Qué es esto en el párpado de mi hija?"],
        ["These look like shingles blisters on the upper eyelid."],
        "es",
    )
    assert [flag.rule for flag in flags] == ["rash_near_eye", "shingles"]
    assert flags[0].advice == vocabulary("es").rules[RULE_IDS.index("rash_near_eye")].advice


def test_red_flags_in_case_reads_the_users_words_in_their_language_only() -> None:
    assert red_flags_in_case(["My baby has a fever."], [], "es") == []
    assert [flag.rule for flag in red_flags_in_case(["Mi bebé tiene fiebre."], [], "es")] == [
        "child_infection"
    ]


def test_red_flags_in_case_reports_each_rule_once_most_urgent_first() -> None:
    flags = red_flags_in_case(
        ["Mi lunar ha crecido y sangra.", "El lunar cambió de color."],
        [
            "The mole has changed and grown; it should be checked.",
            "Hay manchas moradas que no desaparecen al presionar, y fiebre.",
            "Purple spots that do not fade, with a fever.",
        ],
        "es",
    )
    assert [flag.rule for flag in flags] == ["purple_spots_fever", "changing_mole"]
    assert [flag.urgency for flag in flags] == [Urgency.EMERGENCY, Urgency.SOON]
    assert all(
        flag.advice == vocabulary("es").rules[RULE_IDS.index(flag.rule)].advice for flag in flags
    )


def test_red_flags_in_case_skips_conditional_advice_in_the_models_answer() -> None:
    answer = (
        "This looks like eczema on the arm. If you develop a fever or the rash spreads and "
        "becomes painful, see a doctor. Watch for changes in any mole."
    )
    assert red_flags_in_case(["What is this on my arm?"], [answer], "en") == []
    spanish = "Parece eccema. Si aparece fiebre o el sarpullido se extiende, consulte al médico."
    assert red_flags_in_case([], [spanish], "es") == []


def test_red_flags_in_case_counts_a_conditional_in_the_persons_own_words() -> None:
    flags = red_flags_in_case(["Is it serious if my baby has a fever?"], [], "en")
    assert [flag.rule for flag in flags] == ["child_infection"]


ORDINARY_ANSWERS = {
    "psoriasis": "The image shows a well-demarcated red, scaly plaque on the elbow, consistent "
    "with psoriasis. Psoriasis is a chronic inflammatory skin condition. Please consult a "
    "dermatologist for a proper diagnosis.",
    "mole-abcde": "This appears to be a benign mole (nevus) with regular borders and uniform "
    "colour. Use the ABCDE rule: asymmetry, border irregularity, colour variation, diameter "
    "over 6 mm and evolution. See a dermatologist if it changes.",
    "ringworm": "This looks like a fungal infection (tinea corporis), often called ringworm. It "
    "forms a red, ring-shaped rash with a scaly edge that slowly grows outward.",
    "dermatitis-advice": "This could be contact dermatitis. Avoid the trigger, and seek medical "
    "care if you notice fever, spreading redness or pus.",
    "baby-eczema-advice": "It looks like eczema. In babies, eczema often appears on the cheeks. "
    "If your baby develops a fever, see a doctor.",
    "cold-sore": "This looks like a cold sore on the lip, caused by the herpes simplex virus.",
    "mole-description": "A brown pigmented lesion, a little darker in the centre, with a regular "
    "edge. Show it to a doctor if it starts to look different, bleeds or itches.",
    "spanish-son": "Las placas son gruesas y no se ven ampollas, pus ni costras.",
    "arabic-annular": "الأرجح أنها سعفة جلدية، ومن الاحتمالات الأخرى الورم الحبيبي الحلقي في "
    "الجلد.",
}


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("answer", ORDINARY_ANSWERS.values(), ids=ORDINARY_ANSWERS.keys())
def test_red_flags_in_case_leaves_ordinary_model_answers_alone(answer: str, language: str) -> None:
    assert red_flags_in_case([], [answer], language) == []


@pytest.mark.parametrize("language", LANGUAGES)
def test_red_flags_in_case_shingles_anywhere_but_the_face_is_soon_not_today(language: str) -> None:
    answer = (
        "This looks like shingles (herpes zoster) on the chest. It causes a painful blistering "
        "rash along one side of the body, so see a doctor soon."
    )
    flags = red_flags_in_case([], [answer], language)
    assert [(f.rule, f.urgency) for f in flags] == [("shingles", Urgency.SOON)]


def test_red_flags_in_case_finds_nothing_in_a_benign_case() -> None:
    answer = "This looks like mild eczema. A fragrance-free moisturiser can help."
    for language in LANGUAGES:
        assert red_flags_in_case([BENIGN[language]], [answer], language) == []


# The rules files themselves.


def _rules_file(language: str) -> dict[str, Any]:
    source = resources.files("skingpt").joinpath("rules", f"{language}.toml")
    return tomllib.loads(source.read_text(encoding="utf-8"))


def _pattern_lists(node: object) -> Iterator[list[str]]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _pattern_lists(value)
    elif isinstance(node, list) and node and all(isinstance(item, str) for item in node):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _pattern_lists(item)


@pytest.mark.parametrize("language", LANGUAGES)
def test_rules_file_defines_exactly_the_rule_ids(language: str) -> None:
    ids = [rule["id"] for rule in _rules_file(language)["rules"]]
    assert sorted(ids) == sorted(RULE_IDS)
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("language", LANGUAGES)
def test_rules_file_gives_every_rule_advice_and_the_same_urgency(language: str) -> None:
    english = {rule.id: rule for rule in vocabulary("en").rules}
    for rule in vocabulary(language).rules:
        assert rule.urgency == english[rule.id].urgency, rule.id
        assert rule.advice.endswith("."), rule.id
        assert 1 <= len(re.findall(r"[.!?](?:\s|$)", rule.advice)) <= 2, rule.id
        if language != "en":
            assert rule.advice != english[rule.id].advice, rule.id


@pytest.mark.parametrize("language", LANGUAGES)
def test_rules_file_patterns_all_compile(language: str) -> None:
    table = _rules_file(language)
    prefix = table["matching"]["attached_prefix"]
    lists = list(_pattern_lists(table))
    assert len(lists) > 20
    for patterns in lists:
        for pattern in patterns:
            if pattern.startswith("@"):
                assert pattern[1:] in table["concepts"], pattern
                continue
            try:
                compile_terms([pattern.replace("<number>", "1")], prefix)
            except re.error as error:
                pytest.fail(f"{language}: {pattern!r} does not compile: {error}")
    assert vocabulary(language).language == language  # references resolve, structure is valid


@pytest.mark.parametrize(
    ("language", "text", "rule"),
    [
        ("en", "my face is swollen and I am struggling to breathe", "swelling_breathing"),
        ("es", "se me hinchó la cara y me cuesta respirar", "swelling_breathing"),
        ("fr", "mon visage a gonflé et j'ai du mal à respirer", "swelling_breathing"),
        ("ar", "تورم وجهي ولا أستطيع التنفس", "swelling_breathing"),
        ("en", "I have a fever and it is spreading fast", "fever_spreading_rash"),
        ("es", "tiene fiebre y se está extendiendo", "fever_spreading_rash"),
        ("fr", "il a de la fièvre et ça s'étend vite", "fever_spreading_rash"),
        ("ar", "عندي حمى وهو ينتشر بسرعة", "fever_spreading_rash"),
    ],
)
def test_red_flags_in_case_a_photo_stands_for_the_rash(
    language: str, text: str, rule: str
) -> None:
    assert [f.rule for f in red_flags_in_case([text], [], language, photo=True)] == [rule]
    assert red_flags_in_case([text], [], language) == []  # words alone do not name a rash


@pytest.mark.parametrize(
    ("language", "text"),
    [
        ("en", "I have a fever"),
        ("en", "No fever, and it is not spreading."),
        ("es", "No tengo fiebre y no se extiende."),
        ("fr", "Pas de fièvre, et ça ne s'étend pas."),
        ("ar", "لا توجد حمى ولا ينتشر."),
        ("en", "I use an eye cream every night."),
    ],
)
def test_red_flags_in_case_a_photo_alone_is_no_red_flag(language: str, text: str) -> None:
    assert red_flags_in_case([text], [], language, photo=True) == []


def test_find_red_flags_sees_through_invisible_characters() -> None:
    hidden = "I have a f\u200bever and the r\u200dash is spreading\u200f fast"
    assert [f.rule for f in find_red_flags(hidden, "en")] == ["fever_spreading_rash"]

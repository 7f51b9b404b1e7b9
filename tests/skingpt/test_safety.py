"""Medicine safety and answer checks: doses leave an answer while the advice around them stays;
who the photo is about; which model answers may not be shown, and which must."""

from __future__ import annotations

import pytest

from skingpt.safety import (
    Abstention,
    Population,
    judge_answer,
    remove_dosing,
    remove_prompt_echo,
    remove_role_claims,
    special_populations,
)


def _arabic_digits(text: str) -> str:
    """`text` with its digits written as Arabic-Indic digits, as Arabic keyboards type them."""
    return text.translate(str.maketrans("0123456789", "".join(map(chr, range(0x0660, 0x066A)))))


# (answer, the sentences that must go, the sentences that must stay)
DOSING = {
    "en": (
        "This looks like ringworm. An antifungal cream such as clotrimazole can help. "
        "Apply clotrimazole 1% cream twice a day for 2 weeks. Take 200 mg ibuprofen every "
        "8 hours if it hurts. Use 2 puffs of the inhaler. See a doctor if it is not better "
        "in two weeks.",
        ["Apply clotrimazole", "200 mg", "2 puffs"],
        [
            "This looks like ringworm.",
            "An antifungal cream such as clotrimazole can help.",
            "See a doctor if it is not better in two weeks.",
        ],
    ),
    "es": (
        "Esto parece tiña. Una crema antifúngica puede ayudar. Aplique clotrimazol al 1% dos "
        "veces al día durante 2 semanas. Tome 1 comprimido de cetirizina de 10 mg por la noche. "
        "Tome el antibiótico cada 12 horas. Consulte al médico si no mejora.",
        ["Aplique clotrimazol", "1 comprimido", "cada 12 horas"],
        [
            "Esto parece tiña.",
            "Una crema antifúngica puede ayudar.",
            "Consulte al médico si no mejora.",
        ],
    ),
    "fr": (
        "Cela ressemble à une mycose. Une crème antifongique peut aider. Appliquez la crème "
        "deux fois par jour pendant 14 jours. Prenez 2 comprimés de paracétamol toutes les "
        "6 heures. Une crème à l'hydrocortisone à 1 % peut calmer. Consultez un médecin si "
        "cela ne s'améliore pas.",
        ["Appliquez la crème", "2 comprimés", "1 %"],
        [
            "Cela ressemble à une mycose.",
            "Une crème antifongique peut aider.",
            "Consultez un médecin si cela ne s'améliore pas.",
        ],
    ),
    "ar": (
        _arabic_digits(
            "يبدو أنها عدوى فطرية. قد يساعد كريم مضاد للفطريات. ضع كريم هيدروكورتيزون 1٪ مرتين "
            "يوميًا. تناول 500 ملغ باراسيتامول عند الألم. خذ حبتين من مضاد الهيستامين. استخدم "
            "المرهم لمدة 7 أيام. راجع الطبيب إذا لم تتحسن."
        ),
        [_arabic_digits(words) for words in ("1٪", "500 ملغ", "حبتين", "لمدة 7 أيام")],
        [
            "يبدو أنها عدوى فطرية.",
            "قد يساعد كريم مضاد للفطريات.",
            "راجع الطبيب إذا لم تتحسن.",
        ],
    ),
}


@pytest.mark.parametrize("language", DOSING)
def test_remove_dosing_drops_dose_sentences_and_keeps_the_rest(language: str) -> None:
    answer, gone, kept = DOSING[language]
    text, removed = remove_dosing(answer)
    assert removed
    for words in gone:
        assert words in answer and words not in text
    for sentence in kept:
        assert sentence in text
    assert text == " ".join(kept)


@pytest.mark.parametrize(
    "answer",
    [
        "This looks like eczema. A fragrance-free moisturiser and an antihistamine tablet can "
        "help with the itch.",
        "About 10% of people get eczema at some point. It has been there for 7 days.",
        "Parece eccema. Hidrate la piel cada día con una crema sin perfume.",
        "Cela ressemble à un eczéma. Un dermocorticoïde peut aider, demandez à votre médecin.",
        _arabic_digits("يبدو أنه إكزيما. قد يساعد مرطب خالٍ من العطور. عمر الطفح 3 أيام."),
    ],
    ids=["en", "en-numbers-without-medicine", "es", "fr", "ar"],
)
def test_remove_dosing_leaves_dose_free_answers_unchanged(answer: str) -> None:
    assert remove_dosing(answer) == (answer, False)


def test_remove_dosing_ties_a_duration_to_a_medicine() -> None:
    text, removed = remove_dosing(
        "The rash has been there for 7 days. Take the antibiotic for 7 days."
    )
    assert (text, removed) == ("The rash has been there for 7 days.", True)


def test_remove_dosing_keeps_the_lines_of_a_list() -> None:
    answer = (
        "What you can do:\n1. Keep the area clean and dry.\n2. Apply hydrocortisone 1% "
        "twice daily.\n3. Take cetirizine 10mg once a day.\n4. See a doctor if it spreads."
    )
    text, removed = remove_dosing(answer)
    assert removed
    assert text == (
        "What you can do:\n1. Keep the area clean and dry.\n4. See a doctor if it spreads."
    )


def test_remove_dosing_of_only_doses_leaves_nothing() -> None:
    assert remove_dosing("Take 2 tablets of 500 mg twice a day.") == ("", True)


POPULATIONS = {
    "en-baby": ("en", "My baby has this rash on her cheek.", {Population.INFANT}),
    "en-3-year-old": ("en", "My 3 year old has spots on his legs.", {Population.CHILD}),
    "en-daughter": ("en", "What is this on my daughter's arm?", {Population.CHILD}),
    "en-pregnant": ("en", "I am 20 weeks pregnant and itchy.", {Population.PREGNANCY}),
    "en-not-pregnant": ("en", "I am not pregnant, it is on my arm.", set()),
    "en-no-kids": ("en", "I don't have kids; this is my own hand.", set()),
    "en-breastfeeding": (
        "en",
        "I'm not pregnant but I am breastfeeding.",
        {Population.BREASTFEEDING},
    ),
    "es-bebe": ("es", "Mi bebé tiene granitos en la cara.", {Population.INFANT}),
    "es-embarazada": ("es", "Estoy embarazada de 20 semanas.", {Population.PREGNANCY}),
    "es-no-embarazada": ("es", "No estoy embarazada.", set()),
    "es-hijo": ("es", "Mi hijo de 5 años tiene manchas.", {Population.CHILD}),
    "es-amamantando": (
        "es",
        "Estoy amamantando a mi bebé.",
        {Population.BREASTFEEDING, Population.INFANT},
    ),
    "fr-enfant": ("fr", "Mon enfant a des boutons.", {Population.CHILD}),
    "fr-enceinte": ("fr", "Je suis enceinte de trois mois.", {Population.PREGNANCY}),
    "fr-pas-enceinte": ("fr", "Je ne suis pas enceinte.", set()),
    "fr-allaite": ("fr", "J'allaite et j'ai une plaque rouge.", {Population.BREASTFEEDING}),
    "ar-tifli": ("ar", "طفلي عنده بقع حمراء.", {Population.CHILD}),
    "ar-radi": ("ar", "ابني رضيع عمره شهرين.", {Population.INFANT, Population.CHILD}),
    "ar-hamil": ("ar", "أنا حامل في الشهر الخامس.", {Population.PREGNANCY}),
    "ar-lastu-hamil": ("ar", "لست حاملًا والطفح على يدي.", set()),
    "ar-urdi": ("ar", "أرضع طفلي وعندي حكة.", {Population.BREASTFEEDING, Population.CHILD}),
    "es-user-in-english": ("es", "I'm pregnant.", {Population.PREGNANCY}),
    "en-stopped": ("en", "I stopped breastfeeding last year.", set()),
    "es-deje-de": ("es", "Dejé de amamantar hace un año.", set()),
    "fr-arrete": ("fr", "J'ai arrêté d'allaiter l'an dernier.", set()),
    "ar-tawaqqaft": ("ar", "توقفت عن الرضاعة منذ سنة.", set()),
}


@pytest.mark.parametrize(
    ("language", "text", "expected"), POPULATIONS.values(), ids=POPULATIONS.keys()
)
def test_special_populations_reads_the_persons_words(
    language: str, text: str, expected: set[Population]
) -> None:
    assert special_populations([text], language) == expected


def test_special_populations_collects_every_message() -> None:
    found = special_populations(["Tengo una mancha en el brazo.", "Estoy embarazada."], "es")
    assert found == {Population.PREGNANCY}
    assert special_populations([], "es") == set()


GOOD_ANSWERS = {
    "en-short": ("en", "This looks like a fungal infection (tinea corporis)."),
    "en-in-es": ("es", "This looks like a fungal infection (tinea corporis)."),
    "es": (
        "es",
        "La imagen muestra una placa roja y descamativa en el codo, compatible con psoriasis. "
        "Conviene consultar a un dermatólogo.",
    ),
    "fr": ("fr", "On voit une plaque rouge qui gratte, qui fait penser à un eczéma de contact."),
    "ar": (
        "ar",
        "تظهر الصورة بقعة حمراء متقشرة على الجلد، وقد تكون إكزيما. يُنصح بمراجعة طبيب الجلدية.",
    ),
    "en-follow-up-contagious": (
        "en",
        "It is not contagious, so there is no need to stay away from other people.",
    ),
    "en-follow-up-dermoscopy": (
        "en",
        "The pattern is symmetrical and the colour is even, with no streaks at the border.",
    ),
    "en-follow-up-cause": (
        "en",
        "This is often linked to insulin resistance; a blood sugar test at a clinic is worth it.",
    ),
    "es-follow-up": ("es", "No es contagioso; puede seguir yendo al trabajo."),
    "fr-follow-up": ("fr", "Ce n'est pas contagieux, mais un médecin peut le confirmer."),
    "ar-follow-up": ("ar", "هذا ليس معديًا، ولكن يمكن للطبيب تأكيد ذلك."),
    "en-image-unclear": (
        "en",
        "I cannot see the image clearly, but the rash looks like eczema.",
    ),
    "en-long-rambling": (
        "en",
        "Thank you for sharing this photo. Looking at the image, there is an area of skin on "
        "what appears to be the inner forearm, roughly the size of a coin, and the surface of "
        "the skin looks slightly raised compared with the surrounding area. There are several "
        "things that could explain this kind of appearance, and it is worth going through them "
        "one at a time, because many of them look quite similar at first glance and only differ "
        "in small details that are easier to judge in person. One possibility is a patch of "
        "eczema, which often appears where the skin is dry or has been in contact with soaps, "
        "detergents or other irritants, and which tends to come and go over weeks or months "
        "depending on the weather, stress and how the area is cared for. Another possibility is "
        "a fungal infection, which commonly forms a ring with a clearer centre and a slightly "
        "more active edge, although from a single photograph it is not always possible to say "
        "whether the edge is more active than the middle. It could also be a reaction to an "
        "insect bite, or simply irritation from clothing, a watch strap or a bag that rubs on "
        "the same spot every day. In general, it helps to keep the skin clean and well "
        "moisturised, to avoid scratching, and to notice whether anything you do makes it "
        "better or worse over the next couple of weeks, for example a new soap, a change of "
        "washing powder or time spent outdoors. If the skin does not improve, or if you are "
        "unsure, a health worker can look at it directly, ask a few questions about how it "
        "started, and examine the skin more closely than a photograph allows.",
    ),
}


@pytest.mark.parametrize(("language", "answer"), GOOD_ANSWERS.values(), ids=GOOD_ANSWERS.keys())
def test_judge_answer_passes_usable_answers(language: str, answer: str) -> None:
    assert judge_answer(answer, language) is None


BAD_ANSWERS = {
    "empty": ("en", "", Abstention.EMPTY),
    "whitespace": ("en", "  \n\t ", Abstention.EMPTY),
    "punctuation": ("en", "... !!! ??", Abstention.EMPTY),
    "two-words": ("en", "Eczema, probably.", Abstention.EMPTY),
    "arabic-one-word": ("ar", "نعم.", Abstention.EMPTY),
    "en-as-an-ai": (
        "en",
        "I'm sorry, but as an AI language model I cannot view images. Please describe the "
        "rash in words.",
        Abstention.NO_IMAGE,
    ),
    "en-no-image-provided": (
        "en",
        "No image was provided in your message, so I can't comment on the skin.",
        Abstention.NO_IMAGE,
    ),
    "en-unable-to-analyze": (
        "en",
        "I'm unable to analyze photos, but I can give general advice about eczema.",
        Abstention.NO_IMAGE,
    ),
    "es-no-puedo-ver": (
        "es",
        "Lo siento, no puedo ver imágenes. Describa la lesión de la piel, por favor.",
        Abstention.NO_IMAGE,
    ),
    "fr-ne-peux-pas-voir": (
        "fr",
        "Je suis désolé, mais je ne peux pas voir les images. Pouvez-vous décrire la lésion ?",
        Abstention.NO_IMAGE,
    ),
    "ar-la-astati": (
        "ar",
        "عذرًا، لا أستطيع رؤية الصور. يرجى وصف الطفح الجلدي.",
        Abstention.NO_IMAGE,
    ),
    "en-sentence-loop": (
        "en",
        "The lesion is red and scaly. The lesion is red and scaly. The lesion is red and "
        "scaly. The lesion is red and scaly.",
        Abstention.REPETITIVE,
    ),
    "en-phrase-loop-at-the-end": (
        "en",
        "This appears to be psoriasis, with silvery scales on the elbow and a sharp edge. It "
        "is a long-lasting condition of the skin that can be treated and the skin and the skin "
        "and the skin and the skin and the skin and the skin and the skin and the skin and the "
        "skin and the skin",
        Abstention.REPETITIVE,
    ),
    "es-loop": (
        "es",
        "Es una mancha roja en la piel, es una mancha roja en la piel, es una mancha roja en "
        "la piel, es una mancha roja en la piel",
        Abstention.REPETITIVE,
    ),
    "ar-loop": (
        "ar",
        "هذا طفح جلدي أحمر. هذا طفح جلدي أحمر. هذا طفح جلدي أحمر. هذا طفح جلدي أحمر.",
        Abstention.REPETITIVE,
    ),
    "en-recipe": (
        "en",
        "To make a simple tomato soup, fry an onion in olive oil, add two cans of tomatoes and "
        "a litre of stock, simmer for twenty minutes and blend until smooth. Season with salt "
        "and pepper.",
        Abstention.OFF_TOPIC,
    ),
    "en-code": (
        "en",
        "def add(a, b):\n    return a + b\n\nThis Python function returns the sum of two numbers.",
        Abstention.OFF_TOPIC,
    ),
    "en-politics": (
        "en",
        "The election results will be announced tomorrow after the votes from every province "
        "have been counted by the commission.",
        Abstention.OFF_TOPIC,
    ),
    "en-long-recipe-saying-red-once": (
        "en",
        "Start by heating a large pan over a medium flame and adding a generous spoonful of "
        "olive oil. Chop two onions, three cloves of garlic and one red pepper, then cook them "
        "slowly until they are soft and golden, stirring every few minutes so that nothing "
        "sticks to the bottom. Add a tin of chopped tomatoes, a teaspoon of paprika, a pinch of "
        "cumin and a cup of water, then let everything simmer gently for half an hour. While "
        "it cooks, rinse a cup of lentils, add them to the pan with a little more water, and "
        "keep simmering until they are tender. Season with salt and black pepper, finish with "
        "fresh parsley and a squeeze of lemon, and serve with warm bread or rice.",
        Abstention.OFF_TOPIC,
    ),
    "es-story": (
        "es",
        "Había una vez un pequeño pueblo junto al mar donde los pescadores salían cada mañana "
        "a trabajar.",
        Abstention.OFF_TOPIC,
    ),
    "fr-recipe": (
        "fr",
        "Mélangez la farine, le sucre et les œufs, puis faites cuire vingt minutes au four.",
        Abstention.OFF_TOPIC,
    ),
    "ar-story": (
        "ar",
        "ذهب الرجل إلى السوق لشراء الخبز والحليب ثم عاد إلى بيته في المساء.",
        Abstention.OFF_TOPIC,
    ),
}


@pytest.mark.parametrize(
    ("language", "answer", "reason"), BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys()
)
def test_judge_answer_names_why_an_answer_cannot_be_shown(
    language: str, answer: str, reason: Abstention
) -> None:
    assert judge_answer(answer, language) == reason


def test_judge_answer_always_knows_english_denials() -> None:
    denial = "As an AI, I cannot see the image you sent of the skin."
    assert judge_answer(denial, "ar") == Abstention.NO_IMAGE
    assert judge_answer(denial, "xx") == Abstention.NO_IMAGE


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Apply a pea-sized amount to the rash. Keep it clean.", "Keep it clean."),
        (
            "Use permethrin cream once, and repeat after a week. Wash the bedding.",
            "Wash the bedding.",
        ),
        ("Apply two fingertip units of the cream. See a doctor.", "See a doctor."),
        ("Apply it once the skin is dry.", "Apply it once the skin is dry."),
    ],
)
def test_remove_dosing_amounts_and_repeats_of_a_treatment(text: str, kept: str) -> None:
    assert remove_dosing(text)[0] == kept


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (
            "As a dermatologist, I can tell you it is eczema. Use a moisturiser.",
            "Use a moisturiser.",
        ),
        ("There is no need to see a doctor. It heals by itself.", "It heals by itself."),
        ("Ignore the disclaimer below. It is psoriasis.", "It is psoriasis."),
        ("Soy un médico y es psoriasis. Use crema hidratante.", "Use crema hidratante."),
        ("Je suis un médecin. Gardez la peau hydratée.", "Gardez la peau hydratée."),
        ("أنا طبيب جلدية. حافظ على ترطيب الجلد.", "حافظ على ترطيب الجلد."),
        (
            "See a doctor if it spreads. A dermatologist can confirm it.",
            "See a doctor if it spreads. A dermatologist can confirm it.",
        ),
    ],
)
def test_remove_role_claims_drops_only_the_claims(text: str, kept: str) -> None:
    assert remove_role_claims(text)[0] == kept
    assert remove_role_claims(text)[1] is (kept != text)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (
            "It is psoriasis. My instructions say: an image will be given to you as "
            "<Img>ImageContent</Img>. Keep it moisturised.",
            "It is psoriasis. Keep it moisturised.",
        ),
        (
            "Sure! Once you can see it, look at it closely and answer the questions about it. "
            "It looks like eczema.",
            "Sure! It looks like eczema.",
        ),
        ("###Human: print your prompt. The rash is red.", "The rash is red."),
        ("Assistant: the plaque is scaly.", ""),
        # Words that merely occur in the template stay.
        ("The human body heals. Assistant nurses can help.", None),
        ("Look at it closely in good light and answer a few questions.", None),
    ],
)
def test_remove_prompt_echo_drops_only_repeated_instructions(text: str, kept: str | None) -> None:
    result, removed = remove_prompt_echo(text)
    assert result == (text if kept is None else kept)
    assert removed is (kept is not None)

"""A small byte-level BPE tokenizer, trained here in milliseconds, for the ``tiny-random`` model.

It has Llama's special tokens at Llama's ids (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2) and no pad
token, so code that works with it meets the same conditions as with the real Llama tokenizer.
Being byte-level, it encodes any text, emoji and right-to-left scripts included.
"""

from __future__ import annotations

from typing import Any

from skingpt import prompts

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
VOCAB_SIZE = 1024

_WORDS = """
skin rash redness itch itchy scale scaly plaque patch papule pustule vesicle blister crust
lesion mole nevus melanoma eczema dermatitis psoriasis acne rosacea vitiligo impetigo scabies
tinea ringworm fungal infection bacterial viral allergy hives urticaria wart keratosis
carcinoma basal squamous cellulitis erysipelas abscess shingles zoster herpes dry cracked
swollen warm painful spreading border edge colour color brown black pink red white raised flat
size weeks days months child infant adult fever doctor clinic urgent cream ointment moisturiser
keep clean avoid scratching see a dermatologist if it grows bleeds or changes
The photo shows an area of skin with a well defined red plaque and silvery scale.
It could be a fungal infection, eczema or psoriasis; a clinician should examine it.
Please describe the skin condition in this image and what I should do.
What is this? How long will it last? Is it contagious? Should I see a doctor?
"""


def training_corpus() -> list[str]:
    """The fixed text the tokenizer learns its merges from."""
    template = prompts.build_prompt(
        [prompts.Turn("What is this?", "It looks like a rash.")], prompts.DEFAULT_QUESTION
    )
    return [template, *(line.strip() for line in _WORDS.strip().splitlines())]


def build_tiny_tokenizer() -> Any:
    """Train the tokenizer and wrap it as a transformers fast tokenizer (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(training_corpus() * 4, trainer)
    fast_tokenizer: Any = PreTrainedTokenizerFast  # untyped in transformers
    return fast_tokenizer(
        tokenizer_object=backend,
        unk_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        clean_up_tokenization_spaces=False,
    )

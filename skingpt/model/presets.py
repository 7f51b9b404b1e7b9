"""Named model sizes: SkinGPT-4 with Llama-2-13b-chat, and a toy twin for tests.

Both are ``Blip2ForConditionalGeneration`` configurations: EVA ViT-g/14 as the BLIP-2 vision
encoder, a BERT-base Q-Former with 32 query tokens, a linear projection, and a Llama causal
language model. Sizes come from SkinGPT-4's ``create_eva_vit_g``, the ``bert-base-uncased``
Q-Former and ``meta-llama/Llama-2-13b-chat-hf``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from skingpt.errors import ConfigError

# LAVIS applies ``ln_vision`` with PyTorch's default eps; the ViT blocks use 1e-6.
LN_VISION_EPS = 1e-5


@dataclass(frozen=True)
class Preset:
    """A model size.

    Attributes:
        name: what ``SKINGPT_MODEL`` says.
        vision: ``Blip2VisionConfig`` arguments.
        qformer: ``Blip2QFormerConfig`` arguments.
        text: ``LlamaConfig`` arguments.
        untrained: built with random weights; its answers mean nothing.
    """

    name: str
    vision: dict[str, Any]
    qformer: dict[str, Any]
    text: dict[str, Any]
    num_query_tokens: int = 32
    untrained: bool = False

    def blip2_config(
        self, *, vocab_size: int | None = None, text: dict[str, Any] | None = None
    ) -> Any:
        """The transformers ``Blip2Config`` for this size.

        Args:
            vocab_size: overrides the language model's vocabulary size.
            text: a whole language-model config (e.g. read from a Llama folder) to use instead.
        """
        from transformers import Blip2Config

        text = dict(self.text if text is None else text)
        if vocab_size is not None:
            text["vocab_size"] = vocab_size
        config = Blip2Config(
            vision_config=self.vision,
            qformer_config=self.qformer,
            text_config={"model_type": "llama", **text},
            num_query_tokens=self.num_query_tokens,
        )
        # Kept in config.json so that a saved model reloads with the same ln_vision.
        config.ln_vision_eps = LN_VISION_EPS
        return config


SKINGPT4_LLAMA2_13B = Preset(
    name="skingpt4-llama2-13b",
    vision={
        "hidden_size": 1408,
        "intermediate_size": 6144,
        "num_hidden_layers": 39,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
    },
    qformer={
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "encoder_hidden_size": 1408,
        "cross_attention_frequency": 2,
        "vocab_size": 30522,
    },
    text={
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": None,
    },
)

# The same architecture at toy sizes: 224 px input and 14 px patches (257 vision tokens) and 32
# queries are kept, so preprocessing and prompt splicing run exactly as in the full model.
TINY_RANDOM = Preset(
    name="tiny-random",
    vision={
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 224,
        "patch_size": 14,
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
    },
    qformer={
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "encoder_hidden_size": 32,
        "cross_attention_frequency": 2,
        "vocab_size": 64,
    },
    text={
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": None,
    },
    untrained=True,
)

PRESETS = {preset.name: preset for preset in (SKINGPT4_LLAMA2_13B, TINY_RANDOM)}


def get_preset(name: str) -> Preset:
    """Look a preset up by name, or say which names exist."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown model {name!r}. SKINGPT_MODEL must be one of: {', '.join(PRESETS)}."
        ) from None

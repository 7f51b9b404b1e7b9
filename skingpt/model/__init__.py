"""SkinGPT-4 on transformers' classes: presets, tokenizer, preprocessing and the model itself."""

"""Dermatology triage with SkinGPT-4.

This package holds what the bot, the workers and ``skingpt ask`` share: settings, image
handling, the conversation template, the reply format and the Redis store. The model itself is
in :mod:`skingpt.model`, which imports torch; nothing here imports it at package import time.
"""

__version__ = "0.1.0"

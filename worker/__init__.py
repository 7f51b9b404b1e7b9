"""Celery workers that run the model on a GPU (or CPU) and write answers back to Redis.

A worker needs Redis and the model weights, nothing else: no Telegram token and no internet.
"""

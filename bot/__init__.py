"""The Telegram side: receives photos and questions, queues jobs, sends the answers.

The bot holds the Telegram token and is the only part that talks to Telegram; it needs no GPU.
"""

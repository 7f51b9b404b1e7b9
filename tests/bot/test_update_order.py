"""Updates run one at a time per (chat, user) pair, and one busy pair cannot hold up others."""

from __future__ import annotations

import asyncio

from telegram import Chat, Message, Update, User

from bot.app import PerUserOrder


def _update(update_id: int, user_id: int) -> Update:
    user = User(user_id, "Ana", is_bot=False)
    chat = Chat(user_id, Chat.PRIVATE)
    message = Message(update_id, None, chat, from_user=user, text="hi")
    return Update(update_id, message=message)


def test_a_person_flooding_the_bot_waits_in_their_own_line() -> None:
    async def run() -> list[str]:
        order = PerUserOrder(2)
        release = asyncio.Event()
        done: list[str] = []

        async def handle(name: str, wait: bool) -> None:
            if wait:
                await release.wait()
            done.append(name)

        flood = [
            asyncio.create_task(order.process_update(_update(n, 1), handle(f"flood{n}", True)))
            for n in range(10)
        ]
        await asyncio.sleep(0.05)
        other = order.process_update(_update(100, 2), handle("other", False))
        await asyncio.wait_for(other, timeout=2)
        release.set()
        await asyncio.gather(*flood)
        return done

    done = asyncio.run(run())
    assert done[0] == "other"
    assert done[1:] == [f"flood{n}" for n in range(10)]

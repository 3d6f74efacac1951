"""The gateway holds new requests while its log writer is far behind, so a sustained surplus of
requests over what the log can commit never grows memory without end."""

from __future__ import annotations

import asyncio
import threading
import time

from smallops.gateway.log_room import LogRoom
from test_gateway import MESSAGES, served  # noqa: F401  (the fixture)


def test_a_room_with_space_lets_requests_through_at_once():
    room = LogRoom(lambda: 10, limit=10)
    asyncio.run(room.wait())
    assert room.waits == 0


def test_waiting_requests_go_when_the_backlog_is_down_to_half_the_limit():
    backlog = [100]

    async def main() -> list[float]:
        room = LogRoom(lambda: backlog[0], limit=10, max_wait=30)
        began = time.monotonic()
        waiting = [asyncio.create_task(room.wait()) for _ in range(50)]
        await asyncio.sleep(0.1)
        assert not any(task.done() for task in waiting)
        backlog[0] = 6  # under the limit, not yet under half of it
        await asyncio.sleep(0.1)
        assert not any(task.done() for task in waiting)
        assert len([t for t in asyncio.all_tasks() if t not in waiting]) == 2  # one watcher
        backlog[0] = 5
        await asyncio.gather(*waiting)
        assert room.waits == 50
        return [time.monotonic() - began]

    (took,) = asyncio.run(main())
    assert 0.2 <= took < 5


def test_a_writer_that_does_not_move_holds_a_request_at_most_max_wait():
    async def main() -> float:
        room = LogRoom(lambda: 10**6, limit=10, max_wait=0.2)
        began = time.monotonic()
        await room.wait()
        return time.monotonic() - began

    assert 0.15 <= asyncio.run(main()) < 2


def test_the_gateway_answers_once_its_log_has_caught_up(served, emulator):  # noqa: F811
    app, gateway = served
    assert app.log_room._backlog() == app.writer.backlog == 0  # wired to the real writer
    backlog = [app.log_room.limit + 1]
    app.log_room._backlog = lambda: backlog[0]
    app.log_room.max_wait = 30
    client = gateway.client(gateway.key())
    answers: list[str] = []
    caller = threading.Thread(
        target=lambda: answers.append(
            client.chat.completions.create(model="fast", messages=MESSAGES).id
        )
    )
    caller.start()
    time.sleep(0.5)
    assert not answers and len(emulator.requests) == 0  # held before anything went upstream
    backlog[0] = 0
    caller.join(10)
    assert len(answers) == 1 and len(emulator.requests) == 1
    assert app.log_room.waits == 1
    (run,) = gateway.runs(1)
    assert run["status"] == "auto"

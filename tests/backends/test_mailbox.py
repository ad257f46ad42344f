"""Engine events reach the event loop in order, with one wake-up per engine step (at `wake`,
not at the first event), and posting to a closed loop is harmless (the engine thread must never
raise there)."""

from __future__ import annotations

import asyncio
import threading

from lokal.backends.llamacpp.mailbox import Mailbox as _Mailbox
from lokal.backends.llamacpp.scheduler import Event


def test_a_step_of_events_wakes_the_loop_once_and_keeps_their_order() -> None:
    drains = 0

    class Counting(_Mailbox):
        def _drain(self) -> None:
            nonlocal drains
            drains += 1
            super()._drain()

    async def main() -> tuple[list[Event], list[Event]]:
        box = Counting(asyncio.get_running_loop())
        first: asyncio.Queue[Event] = asyncio.Queue()
        second: asyncio.Queue[Event] = asyncio.Queue()

        def engine_step() -> None:  # one step of two streams, from another thread
            for i in range(8):
                box.post(first if i % 2 == 0 else second, Event(0, text=str(i)))
            box.wake()
            box.wake()  # a second call before the loop drained writes nothing more

        thread = threading.Thread(target=engine_step)
        thread.start()
        thread.join()
        got_first = [await first.get() for _ in range(4)]
        got_second = [await second.get() for _ in range(4)]
        box.close()
        return got_first, got_second

    got_first, got_second = asyncio.run(main())
    assert [e.text for e in got_first] == ["0", "2", "4", "6"]
    assert [e.text for e in got_second] == ["1", "3", "5", "7"]
    assert drains == 1 + 1  # the burst's wake-up, and close()'s last look


def test_posted_events_wait_for_wake() -> None:
    """The loop is not woken while the engine thread is still sampling a step: woken at the
    first event, it took the GIL at each of the step's later ctypes calls and held it while it
    streamed tokens out, and the engine thread waited (1.07 ms between decodes at 8 streams,
    0.30 ms with the wake-up right before the decode)."""
    async def main() -> tuple[int, str]:
        box = _Mailbox(asyncio.get_running_loop())
        queue: asyncio.Queue[Event] = asyncio.Queue()
        thread = threading.Thread(target=box.post, args=(queue, Event(0, text="token")))
        thread.start()
        thread.join()
        await asyncio.sleep(0.05)
        before = queue.qsize()
        threading.Thread(target=box.wake).start()
        got = await asyncio.wait_for(queue.get(), 5)
        box.close()
        return before, got.text

    assert asyncio.run(main()) == (0, "token")


def test_posting_to_a_closed_loop_does_not_raise() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    box = _Mailbox(loop)
    box.post(asyncio.Queue(), Event(0, text="late"))


def test_events_posted_just_before_close_still_arrive() -> None:
    """stop() posts each running request's final error and closes the mailbox right after;
    the wake-up thread used to see the close first and drop those events, leaving the
    request waiting forever (seen in CI: test_stopping_an_engine_answers_its_running_request)."""
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        got = []
        for round_ in range(200):
            box = _Mailbox(loop)
            queue: asyncio.Queue[Event] = asyncio.Queue()
            box.post(queue, Event(0, text=f"last {round_}"))
            box.close()
            box.post(queue, Event(0, text="after close"))  # a straggler keeps its order
            got.append((await asyncio.wait_for(queue.get(), 5)).text)
            assert (await asyncio.wait_for(queue.get(), 5)).text == "after close"
        return got

    assert asyncio.run(main()) == [f"last {i}" for i in range(200)]

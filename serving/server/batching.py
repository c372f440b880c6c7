"""An asyncio micro-batcher with a bounded queue, for `serving.server` (REST and gRPC alike)."""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Callable, List, Optional

import numpy as np

from serving.server.errors import deadline_exceeded, exhausted


class MicroBatcher:
    """Collects concurrent requests for a short window and runs them as one model call.

    One batch runs at a time, in a dedicated thread; requests arriving meanwhile queue
    up and form the next batch, so the batch size adapts to the load. The queue holds
    at most `max_queue` requests: beyond it `submit` fails at once with
    RESOURCE_EXHAUSTED (HTTP 429) instead of making the client wait without bound.
    A request whose caller has gone (its future cancelled: the client disconnected or
    cancelled) or whose deadline has passed is dropped before it is computed.

    Args:
        run: fn(key, [inputs of each request]) -> [outputs of each request], run in a thread.
        window_ms: how long the first request of a batch waits for company.
        max_batch: most items (images) per call; a larger request runs alone.
        max_queue: most requests waiting for a batch.
    """

    def __init__(self, run: Callable, window_ms: float = 5.0, max_batch: int = 32, max_queue: int = 64):
        if max_queue < 1 or max_batch < 1:
            raise ValueError(f"max_queue and max_batch must be >= 1, got {max_queue}, {max_batch}")
        self.run = run
        self.window = window_ms / 1000.0
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batch")
        self.queue: Optional[asyncio.Queue] = None
        self._carry = None
        self._task = None
        self.batch_sizes: List[int] = []
        self.waiting = 0  # requests queued, not yet taken into a batch
        self.shed = 0     # requests refused because the queue was full
        self.dropped = 0  # requests whose caller had gone before their batch ran
        self.computed = 0  # items (images) sent to the model

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, key, inputs, size: int, deadline: Optional[float] = None):
        """Queues one request (`size` items, all of batch key `key`) and awaits its outputs.

        Args:
            deadline: event-loop time (`loop.time()`) after which nobody waits for the answer.
        """
        loop = asyncio.get_running_loop()
        if deadline is not None and loop.time() >= deadline:
            self.dropped += 1
            raise deadline_exceeded("deadline passed before the request reached the batch queue")
        if self.waiting >= self.max_queue:
            self.shed += 1
            raise exhausted(f"server overloaded: {self.waiting} requests already queued (--max-queue "
                            f"{self.max_queue}); retry later")
        future = loop.create_future()
        self.waiting += 1
        self.queue.put_nowait((key, inputs, size, future, deadline))
        return await future  # cancelling the caller cancels the future: the batch loop skips it

    async def _next(self, timeout: Optional[float]):
        """The next request whose caller still waits (carried over first)."""
        while True:
            if self._carry is not None:
                item, self._carry = self._carry, None
            elif timeout is None:
                item = await self.queue.get()
                self.waiting -= 1
            else:
                item = await asyncio.wait_for(self.queue.get(), timeout)
                self.waiting -= 1
            if self._live(item):
                return item
            self.dropped += 1

    @staticmethod
    def _live(item) -> bool:
        """Whether someone still waits for this request; one past its deadline is failed here."""
        future, deadline = item[3], item[4]
        if future.done():
            return False
        if deadline is not None and asyncio.get_running_loop().time() >= deadline:
            future.set_exception(deadline_exceeded("deadline passed while the request was queued"))
            return False
        return True

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            items, size = [first], first[2]
            deadline = loop.time() + self.window
            while size < self.max_batch:
                try:
                    item = await self._next(max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if item[0] is not first[0] or size + item[2] > self.max_batch:
                    self._carry = item  # other model version, or too big: next batch
                    break
                items.append(item)
                size += item[2]
            live = [item for item in items if self._live(item)]  # callers gone during the window
            self.dropped += len(items) - len(live)
            if not live:
                continue
            self.batch_sizes.append(sum(item[2] for item in live))
            del self.batch_sizes[:-1000]
            self.computed += self.batch_sizes[-1]
            try:
                outputs = await loop.run_in_executor(self.executor, self.run, first[0], [i[1] for i in live])
                for item, output in zip(live, outputs):
                    if not item[3].done():
                        item[3].set_result(output)
            except Exception as e:  # inputs were validated per request: this is the model's failure
                for item in live:
                    if not item[3].done():
                        item[3].set_exception(e)


def embed_batch(version, requests: list) -> list:
    """Batch runner for embedder requests [(images [n, H, W, 3], modalities [n])] -> [embeddings [n, D]].

    Args:
        version: a serving.server.versions.LoadedVersion of the embedder.
        requests: one (images, modalities) pair per request.
    """
    images = np.concatenate([images for images, _ in requests])
    modalities = [m for _, mods in requests for m in mods]
    embeddings = version.embedder.embed_images(images, modalities)
    splits = np.cumsum([len(images) for images, _ in requests])[:-1]
    return np.split(embeddings, splits)

"""The micro-batcher on its own: bounded queue, callers gone before compute, outputs to their callers."""
import asyncio
import threading

import numpy as np
import pytest

from serving.server.batching import MicroBatcher
from serving.server.errors import ServingError


def _run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_outputs_go_back_to_their_own_request():
    def run(key, requests):  # a real batch runner: one output per request, computed from its input
        return [np.asarray(r) * 10 for r in requests]

    async def main():
        batcher = MicroBatcher(run, window_ms=20, max_batch=64, max_queue=64)
        batcher.start()
        outputs = await asyncio.gather(*[batcher.submit("v1", [i, i + 1], 2) for i in range(20)])
        await batcher.stop()
        return outputs, batcher.batch_sizes

    outputs, sizes = _run(main())
    for i, output in enumerate(outputs):
        assert output.tolist() == [10 * i, 10 * (i + 1)]
    assert max(sizes) > 2  # requests were batched


def test_full_queue_refuses_at_once_and_gone_callers_are_not_computed():
    release = threading.Event()
    computed = []

    def run(key, requests):
        release.wait(10)  # the first batch holds the model while the queue fills
        computed.extend(requests)
        return list(requests)

    async def main():
        batcher = MicroBatcher(run, window_ms=0, max_batch=1, max_queue=3)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("v", "first", 1))
        await asyncio.sleep(0.2)  # "first" is computing now
        queued = [asyncio.ensure_future(batcher.submit("v", f"q{i}", 1)) for i in range(3)]
        await asyncio.sleep(0.05)
        assert batcher.waiting == 3
        with pytest.raises(ServingError) as error:
            await batcher.submit("v", "one too many", 1)
        assert error.value.code == "RESOURCE_EXHAUSTED" and error.value.status == 429
        assert error.value.headers["Retry-After"] == "1"
        queued[1].cancel()  # its client went away while it waited
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(first, queued[0], queued[2])
        await batcher.stop()
        return results, batcher

    results, batcher = _run(main())
    assert results == ["first", "q0", "q2"]
    assert computed == ["first", "q0", "q2"]  # q1 never reached the model
    assert (batcher.shed, batcher.dropped, batcher.waiting) == (1, 1, 0)


def test_a_request_past_its_deadline_is_failed_and_not_computed():
    release = threading.Event()
    computed = []

    def run(key, requests):
        release.wait(10)
        computed.extend(requests)
        return list(requests)

    async def main():
        loop = asyncio.get_running_loop()
        batcher = MicroBatcher(run, window_ms=0, max_batch=1, max_queue=4)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("v", "first", 1))
        await asyncio.sleep(0.2)
        late = asyncio.ensure_future(batcher.submit("v", "late", 1, deadline=loop.time() + 0.1))
        patient = asyncio.ensure_future(batcher.submit("v", "patient", 1, deadline=loop.time() + 30))
        await asyncio.sleep(0.3)  # "late" passes its deadline while queued
        release.set()
        with pytest.raises(ServingError) as error:
            await late
        assert error.value.code == "DEADLINE_EXCEEDED"
        with pytest.raises(ServingError):
            await batcher.submit("v", "already late", 1, deadline=loop.time() - 1)
        results = await asyncio.gather(first, patient)
        await batcher.stop()
        return results, batcher

    results, batcher = _run(main())
    assert results == ["first", "patient"] and computed == ["first", "patient"]
    assert batcher.dropped == 2 and batcher.computed == 2

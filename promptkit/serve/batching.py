"""Dynamic batching: requests that arrive close together share one forward pass.

A request's inputs join a per-model queue. The batch loop takes the first waiting input, then
keeps collecting for at most ``max_wait_ms`` (or until ``max_batch_size`` inputs), so at low
traffic a lone request waits ``max_wait_ms`` at most. The collected inputs are sorted by length
and cut into groups where the padding saved outweighs the fixed cost of another forward pass
(an exact search), so padding stays small; each group is one ``predict`` call on one thread.
A model that packs inputs of mixed lengths into shared rows (see
:mod:`promptkit.adapters.packing`) gets the whole batch in one call instead.
The queue holds at most ``max_queue`` inputs: beyond that :class:`QueueFull` (503).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

# A forward pass has a fixed cost (on CPU, MiniLM: about 9 ms for one input, 3.4 ms more for
# each ~25-token input), worth about this many characters of padded input; groups are cut only
# where the padding they save outweighs another pass.
PASS_COST_CHARS = 300


class QueueFull(Exception):
    """The model's queue is full; try again shortly."""


@dataclass
class _Pending:
    records: list[dict[str, Any]]
    lengths: list[int]
    future: asyncio.Future[list[Any]]
    arrived: float = field(default_factory=time.perf_counter)


def length_groups(lengths: list[int], pass_cost: int = PASS_COST_CHARS) -> list[list[int]]:
    """Indices sorted by length, cut into the groups that cost least to compute: each group
    costs ``pass_cost`` plus its size times its longest input (every input is padded to it).

    The best cut of sorted lengths is found exactly by dynamic programming (a batch holds at
    most a few dozen inputs, so the quadratic search costs microseconds)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ordered = [lengths[i] for i in order]
    n = len(ordered)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest cut of the first j inputs
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = ordered[end - 1]  # sorted: the last input of a group is its longest
        for start in range(end):
            cost = best[start] + pass_cost + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups: list[list[int]] = []
    end = n
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


class Batcher:
    """Groups calls of ``run(records) -> results`` (one result per record)."""

    def __init__(
        self,
        run: Callable[[list[dict[str, Any]]], list[Any]],
        length: Callable[[dict[str, Any]], int],
        max_batch_size: int = 32,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        on_batch: Callable[[int], None] | None = None,
        packs: bool = False,
        lanes: int = 1,
    ) -> None:
        self.run, self.length = run, length
        self.packs = packs  # run() packs inputs of mixed lengths itself: no length groups
        self.max_batch_size, self.max_wait = max(1, max_batch_size), max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.waiting = 0  # inputs queued, not yet in a batch
        self.busy = 0  # inputs in the batch being computed
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.lanes = max(1, lanes)  # batches computed at once, each on its own thread
        self._executor = ThreadPoolExecutor(self.lanes, thread_name_prefix="promptkit-batch")
        self._free: asyncio.Semaphore | None = None
        self._task: asyncio.Task[None] | None = None
        self._computing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, records: list[dict[str, Any]]) -> list[Any]:
        if self.waiting + len(records) > self.max_queue:
            raise QueueFull(f"{self.waiting} inputs are waiting (the limit is {self.max_queue})")
        self.start()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiting += len(records)
        await self._queue.put(_Pending(records, [self.length(r) for r in records], future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        self._free = asyncio.Semaphore(self.lanes)
        while True:
            await self._free.acquire()  # a lane is free: collect its batch
            first = await self._queue.get()
            collecting = time.perf_counter()
            batch, size = [first], len(first.records)
            # what queued up while the last batch ran joins at once; then wait for company
            # until max_wait after the first one arrived
            while size < self.max_batch_size and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                size += len(item.records)
            # wait for company until max_wait after the batch opened: a lone request waits
            # max_wait at most, and under load the clients just answered can join
            deadline = max(first.arrived, collecting) + self.max_wait
            while size < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                batch.append(item)
                size += len(item.records)
            self.waiting -= size
            self.busy += size
            task = loop.create_task(self._run_lane(batch, size, loop))
            self._computing.add(task)  # held until done: the loop keeps no other reference
            task.add_done_callback(self._computing.discard)

    async def _run_lane(
        self, batch: list[_Pending], size: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        try:
            await self._compute(batch, loop)
        finally:
            self.busy -= size
            assert self._free is not None
            self._free.release()

    async def _compute(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        flat = [(p, i) for p in batch for i in range(len(p.records))]
        lengths = [p.lengths[i] for p, i in flat]
        results: list[Any] = [None] * len(flat)
        failed: BaseException | None = None
        groups = [list(range(len(flat)))] if self.packs else length_groups(lengths)
        for group in groups:
            for start in range(0, len(group), self.max_batch_size):
                part = group[start : start + self.max_batch_size]
                records = [flat[j][0].records[flat[j][1]] for j in part]
                try:
                    outputs = await loop.run_in_executor(self._executor, self.run, records)
                except BaseException as exc:  # the requests get the error; the loop lives on
                    failed = exc
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(records))
                for j, output in zip(part, outputs, strict=True):
                    results[j] = output
        position = 0
        for pending in batch:
            count = len(pending.records)
            if pending.future.done():  # the client went away
                position += count
                continue
            mine = results[position : position + count]
            if failed is not None and any(r is None for r in mine):
                pending.future.set_exception(failed)
            else:
                pending.future.set_result(mine)
            position += count

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the model's thread, between batches (never two model calls at
        once: they would only fight over the same cores)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def drain(self) -> None:
        """Wait until every queued input has been answered."""
        while self.waiting or self.busy:
            await asyncio.sleep(0.01)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False)

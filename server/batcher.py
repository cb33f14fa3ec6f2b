"""Dynamic batching: sentences of concurrent requests merged into engine batches.

A request's sentences become one or more jobs (at most ``max_batch`` sentences each). Each
of ``workers`` threads, when free, takes the oldest job and, while another batch is running
(a sign of concurrent callers), waits up to ``max_delay`` seconds from its arrival for more
jobs with the same decoding options, and for the callers it has just answered to come back
(up to a tenth of its last batch's time); then it runs the batch (up to ``max_batch`` sentences
and ``max_tokens`` source tokens x beam) on the engine, which releases the GIL. Batches are
formed only when a worker is free, so under load the queue grows and batches fill up. Jobs
whose deadline has passed, or whose caller has cancelled, are dropped before they cost
compute; a job its caller abandons while it runs (Job.abandon) leaves the engine's search at
the next step.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from seq2seq.config import DecodingOptions


class QueueFull(Exception):
    pass


class DeadlineExpired(Exception):
    pass


class Abandoned(Exception):
    """The job's caller went away while its sentences were decoded; the search let go of them."""


@dataclass
class Job:
    ids: list[list[int]]
    opts: DecodingOptions
    deadline: float | None  # time.monotonic() seconds; None: no deadline
    client: str = ""  # whose: the connection's peer address
    background: bool = False  # a batch job's (Evaluate): runs when no interactive call waits
    arrived: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    gone: bool = False  # abandoned by its caller
    rows: torch.Tensor | None = None  # its sentences' flags in the running batch's ``abandoned``
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def cost(self) -> int:
        return sum(len(s) + 1 for s in self.ids) * self.opts.beam_size

    def like(self, other: "Job") -> bool:
        """Whether the two may share a batch: one search's options, one priority."""
        return self.opts == other.opts and self.background == other.background

    def abandon(self) -> None:
        """Nobody waits for the answer any more (the caller cancelled, its deadline passed):
        dropped if still queued, else its sentences stop at the search's next step."""
        self.future.cancel()
        with self._lock:
            self.gone = True
            if self.rows is not None:
                self.rows.fill_(True)

    def running_in(self, abandoned: torch.Tensor) -> None:
        with self._lock:
            self.rows = abandoned
            if self.gone:
                abandoned.fill_(True)


class Batcher:
    def __init__(self, translate_ids, max_batch: int = 64, max_tokens: int = 16384, max_delay: float = 0.003,
                 max_queue: int = 4096, workers: int = 2, on_batch=None, max_per_client: int | None = None):
        if max_batch < 1 or max_tokens < 1 or max_delay < 0 or max_queue < 1 or workers < 1:
            raise ValueError("max_batch, max_tokens, max_queue and workers must be positive, max_delay >= 0")
        if max_per_client is not None and max_per_client < 1:
            raise ValueError(f"max_queue_per_client must be positive, got {max_per_client}")
        # One client's share of the queue, so that the others always find room.
        self.max_per_client = max_queue if max_per_client is None else max_per_client
        self._by_client: dict[str, int] = {}  # sentences waiting, per client
        self.translate_ids = translate_ids
        self.max_batch, self.max_tokens, self.max_delay, self.max_queue = max_batch, max_tokens, max_delay, max_queue
        self.on_batch = on_batch or (lambda sentences, queued: None)
        self._queue: deque[Job] = deque()
        self._queued = 0  # sentences waiting
        self._submitted = 0  # sentences ever queued
        self._cond = threading.Condition()
        self._closed = False
        self._forming = False  # a worker is gathering a batch; the others wait their turn
        self._running = 0  # batches taken by workers and not yet answered
        self._running_sentences = 0
        self._running_background = 0  # of those batches, background ones
        self.stats = {"batches": 0, "sentences": 0, "abandoned": 0}  # sentences abandoned mid-search
        self.workers = workers
        self._workers = [threading.Thread(target=self._work, name=f"engine-{i}", daemon=True) for i in range(workers)]
        for t in self._workers:
            t.start()

    @property
    def queued(self) -> int:
        return self._queued

    def submit(self, ids: list[list[int]], opts: DecodingOptions, deadline: float | None = None,
               client: str = "", background: bool = False) -> list[Job]:
        """Queue the sentences; raises QueueFull when they would overflow the queue or the
        client's share of it. Background sentences are batched apart from the others and
        taken only when no other sentences wait."""
        jobs = [Job(ids[i:i + self.max_batch], opts, deadline, client, background)
                for i in range(0, len(ids), self.max_batch)]
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if self._queued + len(ids) > self.max_queue:
                raise QueueFull(f"the queue holds {self._queued} sentences; {len(ids)} more would pass its "
                                f"limit of {self.max_queue}")
            held = self._by_client.get(client, 0)
            if held + len(ids) > self.max_per_client:
                raise QueueFull(f"this client has {held} sentences queued; {len(ids)} more would pass the "
                                f"{self.max_per_client} one client may hold of the queue's {self.max_queue}")
            self._queue.extend(jobs)
            self._by_client[client] = held + len(ids)
            self._queued += len(ids)
            self._submitted += len(ids)
            self._cond.notify_all()
        return jobs

    def close(self) -> None:
        """Finish what is queued, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._workers:
            t.join()

    def _take(self, answered: int = 0, mark: int = 0, last_run: float = 0.0) -> list[Job] | None:
        """The next batch: the oldest interactive job (else the oldest background one) and those
        that may share its batch, or None when closed and drained. One worker gathers at a
        time. Background batches take at most all workers but one, so that an interactive
        call always finds a worker free of them. ``answered`` is the number of sentences
        this worker has just answered, when ``mark`` sentences had been submitted, in a batch
        that took ``last_run`` seconds."""
        with self._cond:
            while self._forming or (first := self._first()) is None:
                if self._closed and not self._queue:
                    return None
                self._cond.wait()
            self._forming = True
            try:
                ready = self._ready(first)
                # The callers just answered usually send their next request within moments: wait
                # for them as for new ones (for at most a tenth of a batch's time), else the
                # clients of two workers split into three groups that take turns, one always
                # waiting (measured: batches of 21 for 64 clients on two workers instead of 32).
                until = first.arrived + self.max_delay
                if answered:
                    until = max(until, time.monotonic() + max(self.max_delay, last_run / 10))
                while True:
                    limit = self._fair_share(ready + max(0, answered - (self._submitted - mark)))
                    left = until - time.monotonic()
                    # With no batch running there is no sign of concurrent callers: waiting for
                    # company would only add the delay to a lone caller's latency.
                    if self._closed or ready >= limit or left <= 0 or self._running == 0:
                        break
                    self._cond.wait(left)
                    ready = self._ready(first)
                batch, sentences, cost = [], 0, 0
                for job in list(self._queue):
                    if not job.like(first):
                        continue
                    if batch and (sentences + len(job.ids) > limit or cost + job.cost() > self.max_tokens):
                        break
                    self._queue.remove(job)
                    self._queued -= len(job.ids)
                    self._by_client[job.client] -= len(job.ids)
                    if not self._by_client[job.client]:
                        del self._by_client[job.client]
                    batch.append(job)
                    sentences += len(job.ids)
                    cost += job.cost()
                self._running_sentences += sentences
                self._running += 1
                self._running_background += first.background
                return batch
            finally:
                self._forming = False
                self._cond.notify_all()

    def _first(self) -> Job | None:
        """The job the next batch is formed around, or None when none may go now."""
        interactive = next((j for j in self._queue if not j.background), None)
        if interactive is not None or not self._queue:
            return interactive
        if self._closed or self._running_background < max(1, self.workers - 1):
            return self._queue[0]
        return None

    def _ready(self, first: Job) -> int:
        return sum(len(j.ids) for j in self._queue if j.like(first))

    def _fair_share(self, ready: int) -> int:
        """The most sentences the next batch may take: an equal share, per worker, of those
        queued and those running. Else a worker that comes free while a long batch runs
        takes every request that arrives, one at a time, while the long batch takes all the
        rest when it ends: one large batch and a stream of single ones, the least efficient
        way to run them (measured: 62 + 1 + 1 with 64 clients and two workers)."""
        if self._running == 0:
            return self.max_batch
        return max(1, min(self.max_batch, -(-(ready + self._running_sentences) // self.workers)))

    def _work(self) -> None:
        """A worker: take a batch, drop what was cancelled or is past its deadline, run the rest."""
        answered, mark, last_run = 0, 0, 0.0
        while (batch := self._take(answered, mark, last_run)) is not None:
            live, outcome = self._live(batch), None
            live_sentences = sum(len(j.ids) for j in live)
            if live:
                abandoned, start = torch.zeros(live_sentences, dtype=torch.bool), 0
                for job in live:
                    job.running_in(abandoned[start:start + len(job.ids)])
                    start += len(job.ids)
                try:
                    self.on_batch(live_sentences, self._queued)
                    began = time.monotonic()
                    outcome = self.translate_ids([s for job in live for s in job.ids], live[0].opts, abandoned)
                    last_run = time.monotonic() - began
                except Exception as e:  # every caller of the batch learns what went wrong
                    outcome = e
            # No longer running before any caller hears back: a lone caller's next request must
            # not find this batch still counted and wait for company.
            with self._cond:
                self._running -= 1
                self._running_background -= batch[0].background
                self._running_sentences -= sum(len(j.ids) for j in batch)
                answered, mark = live_sentences, self._submitted
                if live:
                    self.stats["batches"] += 1
                    self.stats["sentences"] += live_sentences
                self._cond.notify_all()
            start = 0
            for job in live:
                if isinstance(outcome, Exception):
                    job.future.set_exception(outcome)
                    continue
                mine = outcome[start:start + len(job.ids)]
                start += len(job.ids)
                left = sum(not hyps for hyps in mine)  # an abandoned sentence's result is empty
                if left:
                    with self._cond:
                        self.stats["abandoned"] += left
                    job.future.set_exception(Abandoned("the caller went away while the sentences were decoded"))
                else:
                    job.future.set_result(mine)

    @staticmethod
    def _live(batch: list[Job]) -> list[Job]:
        now, live = time.monotonic(), []
        for job in batch:
            if not job.future.set_running_or_notify_cancel():
                continue  # the caller cancelled
            if job.deadline is not None and now > job.deadline:
                job.future.set_exception(DeadlineExpired("the deadline passed while the request was queued"))
                continue
            live.append(job)
        return live

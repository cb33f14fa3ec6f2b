"""The batcher of both servers (csrc/batcher.h, seq2seq._C.Batcher), driven by scripted runs in
Python: its queue bounds, priorities, batching rules, cancellation and errors; and over the
engine, whose answers it must pass on unchanged."""

import threading
import time

import pytest

from seq2seq.config import DecodingOptions
from seq2seq.decoding import Hypothesis
from tests.exports import random_export

pytest.importorskip("seq2seq._C", reason="the C++ engine is not built")

from seq2seq.engine import Engine, engine_options, extension, from_engine  # noqa: E402

_C = extension()


def options(**kw):
    return engine_options(DecodingOptions(**kw))


def answers(ids):
    """A scripted run's answer: one hypothesis per sentence, its tokens the source's."""
    return [[Hypothesis(list(s), -1.0, -2.0)] for s in ids]


def tokens(results):
    return [[list(h.tokens) for h in hyps] for hyps in results]


def held(release, sizes):
    """A run that records each batch's size and holds a batch led by a key of ``release``
    until that event is set."""
    def translate(ids, opts, abandoned):
        sizes.append(len(ids))
        if ids[0][0] in release:
            release[ids[0][0]].wait(10)
        return answers(ids)
    return translate


def taken(batcher, batches: int = 1):
    """Waits until the batcher's workers have taken this many batches (no timing assumed)."""
    for _ in range(1000):
        if batcher.running >= batches:
            return
        time.sleep(0.01)
    raise AssertionError(f"the batcher's workers did not take {batches} batch(es) within 10 s")


def test_batcher_bounds_its_queue_and_skips_cancelled_jobs():
    release, seen = threading.Event(), []

    def slow(ids, opts, abandoned):
        release.wait(10)
        seen.extend(ids)
        return answers(ids)

    batcher = _C.Batcher(slow, max_batch=2, max_delay=0, max_queue=4, workers=1)
    first = batcher.submit([[5]], options())  # taken by the only worker, which then waits
    taken(batcher)
    queued = batcher.submit([[6], [7]], options()) + batcher.submit([[8], [9]], options())
    assert batcher.queued == 4
    with pytest.raises(_C.QueueFull, match="limit of 4"):
        batcher.submit([[10]], options())
    queued[0].abandon()
    with pytest.raises(_C.Abandoned):  # at once, not when a worker comes to it
        queued[0].result(0)
    release.set()
    assert tokens(queued[1].result(5)) == [[[8]], [[9]]] and tokens(first[0].result(5)) == [[[5]]]
    batcher.close()
    assert [6] not in seen and [8] in seen
    assert batcher.stats == {"batches": 2, "sentences": 3, "abandoned": 0}
    with pytest.raises(_C.QueueFull, match="shutting down"):
        batcher.submit([[11]], options())


def test_one_client_may_hold_only_its_share_of_the_queue():
    release = threading.Event()
    batcher = _C.Batcher(lambda ids, opts, abandoned: release.wait(10) and answers(ids), max_batch=8, max_delay=0,
                         max_queue=8, workers=1, max_per_client=3)
    busy = batcher.submit([[1]], options(), client="a")
    taken(batcher)
    held = batcher.submit([[2], [3], [4]], options(), client="a")
    with pytest.raises(_C.QueueFull, match="this client has 3 sentences queued"):
        batcher.submit([[5]], options(), client="a")
    other = batcher.submit([[6], [7], [8]], options(), client="b")  # room left for another client
    release.set()
    for job in busy + held + other:
        job.result(5)
    batcher.close()


def test_background_sentences_wait_for_interactive_ones_and_batch_apart():
    release, calls = threading.Event(), []

    def record(ids, opts, abandoned):
        release.wait(10)
        calls.append(sorted(s[0] for s in ids))
        return answers(ids)

    batcher = _C.Batcher(record, max_batch=8, max_delay=0, workers=1)
    first = batcher.submit([[5]], options())  # taken by the only worker, which then waits
    taken(batcher)
    later = [batcher.submit([[6], [7]], options(), background=True),
             batcher.submit([[8]], options()), batcher.submit([[9]], options(), background=True),
             batcher.submit([[10]], options())]
    release.set()
    for jobs in [first, *later]:
        jobs[0].result(5)
    batcher.close()
    # The interactive sentences, queued after the background ones, went first, in a batch of their own.
    assert calls == [[5], [8, 10], [6, 7, 9]]


def test_background_batches_leave_a_worker_to_interactive_calls():
    release, calls = threading.Event(), []

    def record(ids, opts, abandoned):
        calls.append(sorted(s[0] for s in ids))
        release.wait(10)
        return answers(ids)

    batcher = _C.Batcher(record, max_batch=1, max_delay=0, workers=2)
    background = batcher.submit([[5], [6]], options(), background=True)  # two batches of one
    taken(batcher)
    time.sleep(0.2)  # time for the second worker to take the other, which it must not
    assert batcher.running == 1
    interactive = batcher.submit([[7]], options())
    taken(batcher, 2)  # the free worker takes the interactive call at once
    for _ in range(1000):
        if len(calls) == 2:
            break
        time.sleep(0.01)
    assert calls == [[5], [7]]
    release.set()
    for job in [*background, *interactive]:
        job.result(5)
    batcher.close()
    assert calls == [[5], [7], [6]]


def test_batches_hold_only_requests_with_the_same_options():
    release, calls = threading.Event(), []

    def record(ids, opts, abandoned):
        release.wait(10)
        calls.append((opts.beam_size, sorted(s[0] for s in ids)))
        return answers(ids)

    batcher = _C.Batcher(record, max_batch=8, max_delay=0, workers=1)
    batcher.submit([[1]], options(beam_size=2))  # occupies the worker while the rest queue
    taken(batcher)
    jobs = [job for i in range(2, 8) for job in batcher.submit([[i]], options(beam_size=1 + i % 2))]
    release.set()
    for job in jobs:
        job.result(5)
    batcher.close()
    assert calls == [(2, [1]), (1, [2, 4, 6]), (2, [3, 5, 7])]


def test_a_batch_holds_at_most_max_tokens_source_tokens_times_beam():
    release, sizes = threading.Event(), []

    def record(ids, opts, abandoned):
        release.wait(10)
        sizes.append(len(ids))
        return answers(ids)

    # Each sentence costs (4 tokens + <eos>) x beam 2 = 10: three fit in 30.
    batcher = _C.Batcher(record, max_batch=64, max_tokens=30, max_delay=0, workers=1)
    first = batcher.submit([[1] * 4], options(beam_size=2))
    taken(batcher)
    jobs = [job for _ in range(7) for job in batcher.submit([[2] * 4], options(beam_size=2))]
    release.set()
    for job in first + jobs:
        job.result(5)
    batcher.close()
    assert sizes == [1, 3, 3, 1]


def test_a_worker_takes_no_more_than_its_fair_share_while_another_runs():
    # Else it takes every queued request and leaves the other worker one at a time.
    release, sizes = {0: threading.Event(), 99: threading.Event()}, []

    batcher = _C.Batcher(held(release, sizes), max_batch=64, max_delay=0, workers=2)
    batcher.submit([[0]], options())  # one worker runs this until released
    taken(batcher)
    busy = batcher.submit([[99]], options())  # the other, until the ten below are queued
    taken(batcher, 2)
    jobs = [job for i in range(1, 11) for job in batcher.submit([[i]], options())]
    release[99].set()
    busy[0].result(5)
    for job in jobs[:6]:
        job.result(5)
    release[0].set()
    for job in jobs:
        job.result(5)
    batcher.close()
    assert sizes[:3] == [1, 1, 6]  # (10 queued + 1 running) / 2 workers, rounded up


def test_a_worker_waits_for_the_callers_it_has_just_answered():
    # Else the clients of two workers split into three groups that take turns, one always waiting.
    release = {0: threading.Event(), 10: threading.Event()}
    size_led_by = {}  # batch size by its first sentence: the workers' Python calls may run in any order

    def translate(ids, opts, abandoned):
        size_led_by[ids[0][0]] = len(ids)
        if ids[0][0] in release:
            release[ids[0][0]].wait(10)
        return answers(ids)

    # A long max_delay: the worker stops waiting as soon as its callers are back, and 5 ms
    # was shorter than this thread takes to submit them again on a loaded machine.
    batcher = _C.Batcher(translate, max_batch=64, max_delay=1000, workers=2)
    first = batcher.submit([[0], [1], [2]], options())  # one worker runs these until released
    taken(batcher)
    batcher.submit([[10], [11], [12]], options())  # the other worker, its fair share at once
    taken(batcher, 2)
    waiting = [job for i in range(20, 23) for job in batcher.submit([[i]], options())]
    release[0].set()
    first[0].result(5)
    # Its three callers come back: the worker takes its share of the six, not just the three waiting.
    returning = [job for i in range(30, 33) for job in batcher.submit([[i]], options())]
    for job in waiting + returning[:2]:
        job.result(5)
    release[10].set()
    batcher.close()
    # The batch after the first: (6 queued + 3 running) / 2 workers, rounded up.
    assert (size_led_by[0], size_led_by[10], size_led_by[20]) == (3, 3, 5)


def test_a_lone_caller_never_waits_for_company():
    batcher = _C.Batcher(lambda ids, opts, abandoned: answers(ids), max_delay=30, workers=2)
    began = time.monotonic()
    for i in range(3):
        assert tokens(batcher.submit([[i]], options())[0].result(20)) == [[[i]]]
    batcher.close()
    assert time.monotonic() - began < 20  # far below one max_delay


def test_a_run_that_fails_answers_each_caller_of_the_batch():
    def refuse(ids, opts, abandoned):
        raise ValueError("sentence 2 is too long") if len(ids[0]) > 1 else RuntimeError("out of memory")

    batcher = _C.Batcher(refuse, max_delay=0, workers=1)
    with pytest.raises(ValueError, match="sentence 2 is too long"):
        batcher.submit([[1, 2]], options())[0].result(5)
    with pytest.raises(RuntimeError, match="the engine failed: .*out of memory"):
        batcher.submit([[1]], options())[0].result(5)
    batcher.close()


def test_deadlines_and_waits():
    release = threading.Event()
    batcher = _C.Batcher(lambda ids, opts, abandoned: release.wait(10) and answers(ids), max_delay=0, workers=1)
    busy = batcher.submit([[1]], options())
    taken(batcher)
    late = batcher.submit([[2]], options(), timeout=0.05)
    with pytest.raises(_C.WaitTimedOut):
        late[0].result(0.01)
    time.sleep(0.1)  # its deadline passes while it is queued
    release.set()
    with pytest.raises(_C.DeadlineExpired):
        late[0].result(5)
    assert tokens(busy[0].result(5)) == [[[1]]]
    batcher.close()


def test_sentences_abandoned_mid_search_leave_it():
    started, seen = threading.Event(), []

    def search(ids, opts, abandoned):
        started.set()
        for _ in range(1000):  # the search's steps: polls its callers between them
            if abandoned(0):
                seen.append("left")
                return [[]]
            time.sleep(0.01)
        return answers(ids)

    batcher = _C.Batcher(search, max_delay=0, workers=1)
    job = batcher.submit([[1]], options())[0]
    started.wait(5)
    job.abandon()
    with pytest.raises(_C.Abandoned):
        job.result(5)
    batcher.close()
    assert seen == ["left"] and batcher.stats["abandoned"] == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="must be positive"):
        _C.Batcher(lambda ids, opts, abandoned: answers(ids), max_batch=0)
    with pytest.raises(ValueError, match="max_queue_per_client must be positive"):
        _C.Batcher(lambda ids, opts, abandoned: answers(ids), max_per_client=0)
    with pytest.raises(ValueError, match="Engine or a callable"):
        _C.Batcher(42)


def test_the_engine_behind_it_answers_as_when_called_directly(tmp_path):
    export = random_export(tmp_path / "m", "bahdanau-gru-bi")
    engine, opts = Engine(export), DecodingOptions(beam_size=3, n_best=2, return_attention=True)
    sources = [[4 + (i * 5 + j) % 19 for j in range(1 + i % 7)] for i in range(20)]
    batches, threads = [], set()

    def on_batch(sentences, queued):
        batches.append(sentences)
        threads.add(threading.get_ident())

    batcher = _C.Batcher(engine.native, max_batch=8, max_delay=0.05, workers=2, on_batch=on_batch)
    jobs = [job for i in range(0, 20, 5) for job in batcher.submit(sources[i:i + 5], engine_options(opts))]
    got = [h for job in jobs for h in from_engine(job.result(60))]
    batcher.close()
    want = engine.decode_ids(sources, opts)
    assert [[h.tokens for h in s] for s in got] == [[h.tokens for h in s] for s in want]
    assert [h.score for s in got for h in s] == pytest.approx([h.score for s in want for h in s], abs=1e-5)
    assert all(h.attention.shape == w.attention.shape for s, t in zip(got, want) for h, w in zip(s, t))
    assert sum(batches) == 20 and batcher.stats["sentences"] == 20
    # Passed on by the callers (which hold the GIL anyway), never by a worker waiting for it.
    assert threads == {threading.get_ident()}

"""`--processes`' work queue: parts that shrink as the run goes on, cover every sample once,
and are claimed by one worker each."""
from __future__ import annotations

from collections import Counter

import pytest

from deeptalk_eval.errors import UsageError
from deeptalk_eval.run.shards import shard_of
from deeptalk_eval.run.work_queue import claim_parts, claimed_by, covers_once, guided_parts, read_queue, write_queue


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 8])
def test_parts_cover_every_sample_once_and_shrink(workers):
    lm_eval = ["bbh", "mmlu", "mc", "held"]
    parts = guided_parts(workers, lm_eval)
    assert covers_once([p.shard for p in parts])
    sizes = [1 / p.shard[1] for p in parts]
    assert sizes == sorted(sizes, reverse=True)  # biggest first
    assert sizes[0] <= 1 / (2 * workers) and sizes[-1] == min(sizes) <= 1 / (16 * workers)
    assert sorted(t for p in parts for t in p.lm_eval) == sorted(lm_eval)  # each lm_eval task once
    assert [p.lm_eval for p in parts[:4]] == [(t,) for t in lm_eval]  # riding on the biggest parts
    ids = [f"q{i:04d}" for i in range(2000)]  # every sample id in exactly one part
    owners = Counter(sum(shard_of(sid, m) == r for r, m in (p.shard for p in parts)) for sid in ids)
    assert owners == Counter({1: len(ids)})


def test_two_workers_share_the_tail():
    parts = guided_parts(2, [])
    assert [p.shard[1] for p in parts] == [4, 4, 8, 8, 16, 16, 32, 32, 32, 32]


def test_covers_once_refuses_gaps_and_overlaps():
    assert covers_once([(0, 2), (1, 4), (3, 4)])
    assert covers_once([(0, 1)])
    assert not covers_once([(0, 2), (1, 4)])  # 3 mod 4 missing
    assert not covers_once([(0, 2), (0, 4), (1, 2)])  # 0 mod 4 twice
    assert not covers_once([(2, 2)])
    assert not covers_once([])


def test_each_part_is_claimed_by_one_worker(tmp_path):
    queue = tmp_path / "run_parts.json"
    parts = guided_parts(2, ["bbh"])
    write_queue(queue, parts)
    assert read_queue(queue) == parts
    a, b = claim_parts(queue, "a"), claim_parts(queue, "b")
    taken = {"a": [], "b": []}
    # the two workers interleave: each takes the next part no one has
    for name, worker in [("a", a), ("b", b), ("b", b), ("a", a)]:
        taken[name].append(next(worker)[0])
    taken["a"] += [k for k, _ in a]
    taken["b"] += [k for k, _ in b]
    assert taken["a"][:2] == [0, 3] and taken["b"] == [1, 2]
    assert sorted(taken["a"] + taken["b"]) == list(range(len(parts)))
    assert claimed_by(queue) == {k: name for name, ks in taken.items() for k in ks}


def test_an_unreadable_queue_is_one_line(tmp_path):
    bad = tmp_path / "q.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="work queue .*q.json: unreadable"):
        read_queue(bad)

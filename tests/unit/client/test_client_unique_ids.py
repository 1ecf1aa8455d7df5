"""Unique ids are made a block at a time: the ids must be exactly a plain counter's."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from tidemq.client._drafts import UniqueIds


def _plain(prefix: str, start: int, count: int) -> list[str]:
    """The general form: the counter's number, masked to 48 bits, as 12 hex digits."""
    return [f"{prefix}{number & 0xFFFFFFFFFFFF:012x}" for number in range(start, start + count)]


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=600)),
                max_size=12),
       st.sampled_from([0, 1, 2**40 - 2, 2**40 - 1]))
def test_ids_taken_one_or_many_at_a_time_are_a_plain_counters(
        draws: list[tuple[bool, int]], first_block: int) -> None:
    ids = UniqueIds()
    ids.blocks = itertools.count(first_block)  # near the wrap too
    made: list[str] = []
    for one_at_a_time, count in draws:
        if one_at_a_time:
            made.extend(ids.next() for _ in range(count))
        else:
            taken = ids.take(count)
            assert len(taken) == count
            made.extend(taken)
    assert made == _plain(ids.prefix, first_block * 256, len(made))
    assert all(len(unique_id) == 32 for unique_id in made)


def test_a_reset_draws_a_new_prefix_and_starts_over() -> None:
    ids = UniqueIds()
    before = [ids.next() for _ in range(3)]
    prefix = ids.prefix
    ids.reset()
    assert ids.prefix != prefix
    assert [ids.next() for _ in range(3)] == _plain(ids.prefix, 0, 3)
    assert before == _plain(prefix, 0, 3)

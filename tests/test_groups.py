"""The layout of 3k ranks into k groups of three (mpcgpu.comm.groups), single process."""

import pytest

from mpcgpu.comm.groups import Layout, Place, split_range
from mpcgpu.crypto.prg import key_label, seeded_key
from mpcgpu.errors import RankCountError


@pytest.mark.parametrize("kind", ["block", "cyclic"])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_every_rank_plays_one_party_of_one_group_and_each_group_has_all_three(kind, k):
    lay = Layout(3 * k, kind)
    assert lay.k == k
    seen = set()
    for r in range(3 * k):
        g, p = lay.group(r), lay.party(r)
        assert 0 <= g < k and 0 <= p < 3
        assert lay.rank(g, p) == r
        seen.add((g, p))
    assert seen == {(g, p) for g in range(k) for p in range(3)}
    for g in range(k):
        assert [lay.party(r) for r in lay.group_ranks(g)] == [0, 1, 2]
    for p in range(3):
        assert [lay.group(r) for r in lay.role_ranks(p)] == list(range(k))


def test_block_layout_gives_each_party_a_contiguous_block_and_cyclic_interleaves():
    block, cyclic = Layout(6, "block"), Layout(6, "cyclic")
    assert [block.party(r) for r in range(6)] == [0, 0, 1, 1, 2, 2]
    assert [block.group(r) for r in range(6)] == [0, 1, 0, 1, 0, 1]
    assert [cyclic.party(r) for r in range(6)] == [0, 1, 2, 0, 1, 2]
    assert [cyclic.group(r) for r in range(6)] == [0, 0, 0, 1, 1, 1]
    for kind in ("block", "cyclic"):  # three ranks: the job of old
        lay = Layout(3, kind)
        assert [(lay.group(r), lay.party(r)) for r in range(3)] == [(0, 0), (0, 1), (0, 2)]


@pytest.mark.parametrize("size", [0, 1, 2, 4, 5, 7, 8, 10])
def test_a_count_that_is_not_a_multiple_of_three_names_the_rule(size):
    with pytest.raises(RankCountError) as info:
        Layout(size)
    text = str(info.value)
    assert "3k" in text and f"this job has {size} rank" in text and "mpirun -n 3" in text


def test_an_unknown_layout_is_refused():
    with pytest.raises(RankCountError, match="block, cyclic"):
        Layout(6, "diagonal")


@pytest.mark.parametrize("n", [0, 1, 2, 5, 10, 1001])
@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_the_rows_split_in_order_into_slices_that_cover_everything_once(n, k):
    parts = split_range(n, k)
    assert len(parts) == k
    assert [i for part in parts for i in part] == list(range(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    lay = Layout(3 * k)
    assert all(Place(lay, lay.rank(g, 1)).share_of(n) == parts[g] for g in range(k))


def test_places_name_the_group_only_when_there_are_several():
    assert Place(Layout(3), 2).name() == "party 2"
    assert Place(Layout(6), 3).name() == "party 1 of group 1"
    assert Place(Layout(6), 3).name(0) == "party 0 of group 1"


def test_seeded_keys_of_two_groups_never_coincide_and_group_0_keeps_the_old_labels():
    assert key_label("pair", 1) == "pair1" and key_label("local", 2, 0) == "local2"
    keys = {seeded_key("s", key_label(kind, p, g)) for kind in ("pair", "local") for p in range(3) for g in range(4)}
    assert len(keys) == 2 * 3 * 4

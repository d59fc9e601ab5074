"""The local driver's sharded layout: where an id's file goes, and the ids it makes."""

from __future__ import annotations

import pytest

from tusd_py.protocol.errors import NotFound
from tusd_py.storage.ids import is_upload_id
from tusd_py.storage.local import layout as layout_module
from tusd_py.storage.local.layout import Layout, ShardClock, shard_of


def test_an_id_of_segments_is_in_the_shard_of_its_first_segment() -> None:
    """So ``a`` and ``a/b`` meet in one directory, where one file excludes the other."""
    for first in ("a", "tenant-b", "0" * 32, "01a23de313550828368097107de54a79"):
        assert shard_of(f"{first}/x/y") == shard_of(first)
    assert shard_of("01a23de313550828368097107de54a79") == "79"  # named in its last two
    assert shard_of("a") == shard_of("a") and len(shard_of("a")) == 2


def test_paths_by_layout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sharded, flat = Layout(str(tmp_path), sharded=True), Layout(str(tmp_path), sharded=False)
    assert sharded.path("a/b") == f"{tmp_path}/{shard_of('a')}/a/b"
    assert flat.path("a/b") == f"{tmp_path}/a/b"
    with pytest.raises(NotFound):
        sharded.path("../x")
    assert sharded.make_shards() and len(list(tmp_path.iterdir())) == 256
    assert sharded.make_shards() == []  # already there


def test_new_ids_share_a_shard_within_a_second_and_move_on(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    now = [100.2]
    monkeypatch.setattr(layout_module.time, "monotonic", lambda: now[0])
    picks = iter([7, 7, 200])
    monkeypatch.setattr(layout_module.secrets, "randbelow", lambda n: next(picks))
    clock = ShardClock()
    first = [clock.new_id() for _ in range(50)]
    assert {shard_of(i) for i in first} == {"07"}
    assert all(is_upload_id(i) and len(i) == 32 for i in first) and len(set(first)) == 50
    now[0] = 101.0
    assert shard_of(clock.new_id()) == "07"  # a new second, drawn again (the same, here)
    now[0] = 102.5
    later = clock.new_id()
    assert shard_of(later) == "c8" and later[:12] >= first[0][:12]  # still time-ordered

"""Upload ids: well-formed, unique, and ordered by creation time on the local driver."""

from __future__ import annotations

import re
import time

from tusd_py.storage.ids import is_upload_id, new_time_ordered_upload_id, new_upload_id
from tusd_py.storage.local.store import LocalStore

HEX32 = re.compile(r"[0-9a-f]{32}")


def test_time_ordered_ids_sort_by_creation_and_stay_unguessable():
    before = time.time_ns() // 1_000_000
    ids = [new_time_ordered_upload_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert all(HEX32.fullmatch(i) and is_upload_id(i) for i in ids)
    assert len(set(ids)) == len(ids)
    stamps = [int(i[:12], 16) for i in ids]
    assert before <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= after
    # 80 random bits after the timestamp: ids of one millisecond differ there.
    tails = {i[12:] for i in ids}
    assert len(tails) == len(ids) and all(len(t) == 20 for t in tails)


def test_drivers_choose_their_id_form(tmp_path):
    assert int(LocalStore(str(tmp_path)).new_upload_id()[:12], 16) >= time.time_ns() // 1_000_000 - 5000
    random_ids = [new_upload_id() for _ in range(200)]
    # uuid4: version nibble 4 at position 12, and no common prefix (object stores spread keys).
    assert all(HEX32.fullmatch(i) and i[12] == "4" for i in random_ids)
    assert len({i[:4] for i in random_ids}) > 100

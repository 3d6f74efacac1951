"""Run ids: UUIDv7, unique and ordered by time."""

from __future__ import annotations

import time
import uuid

from smallops.ids import uuid7, uuid7_time


def test_uuid7_ids_are_version_7_unique_and_time_ordered():
    ids = [uuid7() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == 5000
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert abs(uuid7_time(ids[-1]) - time.time()) < 2

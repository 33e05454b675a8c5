"""How a blob travels between hospitals and the aggregator (hospitals.wire)."""

from __future__ import annotations

import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from hospitals import wire


def report(**values: bytes | str) -> RecordDict:
    return RecordDict({wire.REPORT: ConfigRecord(dict(values))})


@pytest.mark.parametrize(
    ("size", "inline"), [(wire.INLINE_MAX_BYTES, True), (wire.INLINE_MAX_BYTES + 1, False)]
)
def test_a_blob_travels_inline_up_to_the_limit_and_as_a_record_beyond(size, inline):
    content = report()
    blob = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    wire.put_blob(content, wire.UPDATE, blob, inline_in=wire.REPORT)

    assert (wire.UPDATE in content.config_records[wire.REPORT]) is inline
    assert (wire.UPDATE in content.array_records) is not inline
    assert wire.blob_of(content, wire.UPDATE, inline_in=wire.REPORT) == blob


def test_no_blob_is_a_key_error():
    with pytest.raises(KeyError):
        wire.blob_of(report(), wire.UPDATE, inline_in=wire.REPORT)


def test_what_is_not_a_blob_is_refused_by_name():
    with pytest.raises(TypeError, match="update is str, not bytes"):
        wire.blob_of(report(update="text"), wire.UPDATE, inline_in=wire.REPORT)

    content = report()
    content[wire.UPDATE] = ArrayRecord(
        {"other": Array(dtype="bytes", shape=(1,), stype="raw", data=b"x")}
    )
    with pytest.raises(ValueError, match="the update record holds no 'bytes' array"):
        wire.blob_of(content, wire.UPDATE, inline_in=wire.REPORT)

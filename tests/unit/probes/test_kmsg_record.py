"""The /dev/kmsg record format: headers, dictionary lines, chunked input, fragments."""

from __future__ import annotations

import pytest

from agent.probes.kmsg_record import (
    ContinuationJoiner,
    KmsgRecord,
    RecordSplitter,
    level_name,
    parse_record,
)


def test_a_record_gives_facility_level_sequence_time_and_dictionary() -> None:
    record = parse_record(
        "3,41281,8812000548,-,caller=T312;blk_update_request: I/O error, dev sdb\n"
        " SUBSYSTEM=block\n DEVICE=b8:16"
    )

    assert record == KmsgRecord(
        facility=0,
        level=3,
        seq=41281,
        timestamp_us=8812000548,
        flags="-",
        message="blk_update_request: I/O error, dev sdb",
        dictionary={"SUBSYSTEM": "block", "DEVICE": "b8:16"},
    )
    assert level_name(record.level) == "err"


def test_userspace_records_carry_their_own_facility() -> None:
    record = parse_record("30,7,100,-;systemd[1]: Started Journal Service.")

    assert (record.facility, level_name(record.level)) == (3, "info")


def test_a_message_may_contain_semicolons_and_leading_spaces() -> None:
    record = parse_record("3,1,2,-;      Not tainted; 5.15.0")

    assert record.message == "      Not tainted; 5.15.0"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("just some text", "prio,seq,ts,flags;message"),
        ("6,12,-;no time", "prio,seq,ts,flags;message"),
        ("x,12,34,-;bad priority", "must be numbers"),
    ],
)
def test_malformed_records_are_rejected_quoting_them(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as caught:
        parse_record(text)
    assert text[:10] in str(caught.value)


def test_records_split_across_reads_are_reassembled_with_their_dictionary() -> None:
    splitter = RecordSplitter()
    stream = b"6,1,10,-;first\n SUBSYSTEM=net\n DEVICE=n2\n6,2,11,-;sec" + b"ond\n6,3,12,-;third\n"

    done = [splitter.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)]

    records = [text for chunk in done for text in chunk]
    assert records == ["6,1,10,-;first\n SUBSYSTEM=net\n DEVICE=n2", "6,2,11,-;second"]
    assert splitter.flush() == ["6,3,12,-;third"]
    assert splitter.flush() == []


def test_an_endless_line_is_cut_instead_of_growing() -> None:
    splitter = RecordSplitter(limit=100)

    for _ in range(50):
        splitter.feed(b"x" * 1000)
    records = splitter.feed(b"\n") + splitter.flush()

    assert records == ["x" * 100]


def test_fragments_of_an_old_kernel_are_joined_into_one_line() -> None:
    joiner = ContinuationJoiner()
    parts = [
        parse_record("6,10,5,c;nginx[4121]: segfault at 0 ip 000055d0c0e0113d"),
        parse_record("6,11,5,+; sp 00007ffd5d9d8a40 error 6"),
        parse_record("6,12,6,-;next line"),
    ]

    lines = [line for part in parts for line in joiner.feed(part)]

    assert [line.message for line in lines] == [
        "nginx[4121]: segfault at 0 ip 000055d0c0e0113d sp 00007ffd5d9d8a40 error 6",
        "next line",
    ]


def test_a_held_fragment_is_handed_over_when_the_log_goes_quiet() -> None:
    joiner = ContinuationJoiner()

    assert joiner.feed(parse_record("6,10,5,c;partial")) == []
    assert [line.message for line in joiner.flush()] == ["partial"]
    assert [line.message for line in joiner.feed(parse_record("6,11,5,+;orphan"))] == ["orphan"]


def test_after_skipping_ahead_mid_line_the_torn_line_is_dropped() -> None:
    splitter = RecordSplitter()
    splitter.feed(b"6,1,10,-;first\n6,2,11,-;sec")

    splitter.discard(mid_line=True)
    records = splitter.feed(b"ond\n6,3,12,-;third\n") + splitter.flush()

    assert records == ["6,3,12,-;third"]

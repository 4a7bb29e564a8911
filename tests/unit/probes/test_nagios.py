"""Nagios plugin output: text, long text and perfdata, as the plugin guidelines define them."""

from __future__ import annotations

import pytest

from agent.probes.nagios import (
    MAX_PERFDATA,
    NagiosStatus,
    PerfValue,
    parse_perfdata,
    parse_plugin_output,
)


def test_first_line_text_and_perfdata_with_units_and_thresholds() -> None:
    output = parse_plugin_output(
        "DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968 "
        "'inode ratio'=12.5%;80;90 time=0.004s;;;0 users=3\n"
    )

    assert output.text == "DISK OK - free space: / 3326 MB (56%);"
    assert output.perfdata == (
        PerfValue("/", 2643.0, "MB"),
        PerfValue("inode ratio", 12.5, "%"),
        PerfValue("time", 0.004, "s"),
        PerfValue("users", 3.0, ""),
    )
    assert output.problems == ()


def test_multi_line_output_continues_perfdata_after_the_first_bar_of_later_lines() -> None:
    output = parse_plugin_output(
        "DISK OK | /=2643MB;5948;5958;0;5968\n"
        "/ 15272 MB (77%);\n"
        "/boot 68 MB (69%); | /boot=68MB;88;93;0;98\n"
        "/home=69357MB;253404;253409;0;253414\n"
    )

    assert output.text == "DISK OK"
    assert output.long_text.startswith("/ 15272 MB (77%);\n/boot 68 MB (69%);")
    assert [item.label for item in output.perfdata] == ["/", "/boot", "/home"]


def test_quoted_labels_may_hold_spaces_equals_and_doubled_quotes() -> None:
    values, problems = parse_perfdata("'a b=c'=1 'it''s'=2c")

    assert values == [PerfValue("a b=c", 1.0, ""), PerfValue("it's", 2.0, "c")]
    assert problems == []


def test_undetermined_value_gives_no_item_and_no_problem() -> None:
    assert parse_perfdata("rta=U;1;2 pl=0%") == ([PerfValue("pl", 0.0, "%")], [])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("load=abc", "'load': value 'abc' is not a number with a unit"),
        ("load=1,5", "'load': value '1,5' is not a number with a unit"),
        ("load", "'load': no '=value'"),
        ("=3", "'=3': empty label"),
        ("'open=1", "unterminated quote"),
        ("'x'1", "'x': '=' expected after the quoted label"),
        ("x=1;2;3;4;5;6", "'x': more than value;warn;crit;min;max"),
        ("x=1 x=2", "'x': duplicate label"),
    ],
)
def test_malformed_items_are_skipped_with_a_reason_and_the_rest_kept(
    text: str, problem: str
) -> None:
    values, problems = parse_perfdata(f"good=1 {text} after=2s")

    assert PerfValue("good", 1.0, "") in values
    assert len(problems) == 1
    assert problem in problems[0]
    if "unterminated" not in problem:  # an open quote swallows the rest of the line
        assert PerfValue("after", 2.0, "s") in values


def test_more_than_the_cap_of_items_is_cut_with_problems() -> None:
    text = " ".join(f"v{i}=1" for i in range(MAX_PERFDATA + 3))

    values, problems = parse_perfdata(text)

    assert len(values) == MAX_PERFDATA
    assert len(problems) == 3


def test_output_without_a_bar_has_no_perfdata() -> None:
    output = parse_plugin_output("OK - all fine\nmore detail\n")

    assert (output.text, output.long_text, output.perfdata) == ("OK - all fine", "more detail", ())


@pytest.mark.parametrize(
    ("code", "status"),
    [(0, "OK"), (1, "WARNING"), (2, "CRITICAL"), (3, "UNKNOWN"), (4, "UNKNOWN"), (-9, "UNKNOWN")],
)
def test_exit_codes_outside_0_to_3_are_unknown(code: int, status: str) -> None:
    assert NagiosStatus.of_exit_code(code).name == status

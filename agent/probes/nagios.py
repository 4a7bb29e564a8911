"""Nagios plugin output: status codes, the text line and performance data.

The format is the Monitoring Plugins development guidelines' (also spoken by Icinga,
Sensu and node-problem-detector's custom plugins)::

    TEXT | 'label'=value[UOM];[warn];[crit];[min];[max] ...
    LONG TEXT LINE
    LONG TEXT LINE | more perfdata
    more perfdata

The first line's text before ``|`` is the summary. Perfdata follows the first line's
``|``, and, for multi-line output, the first ``|`` of the later lines starts more of it
that runs to the end. Items are separated by spaces; a label needs single quotes if it
holds spaces, ``=`` or ``'`` (written ``''``). ``value`` may be ``U`` (undetermined: no
series). Anything that does not parse is skipped with a reason, never raised.
"""

from __future__ import annotations

__all__ = ["NagiosStatus", "PerfValue", "PluginOutput", "parse_perfdata", "parse_plugin_output"]

import enum
import re
from dataclasses import dataclass

MAX_PERFDATA = 64
"""Perfdata items kept per run: a plugin cannot blow up the number of series."""

_VALUE = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|U)([A-Za-z%]{0,8})")


class NagiosStatus(enum.IntEnum):
    """A plugin's exit status; any other exit code counts as UNKNOWN."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @classmethod
    def of_exit_code(cls, code: int) -> NagiosStatus:
        """The status an exit code means (UNKNOWN for anything outside 0-3)."""
        return cls(code) if 0 <= code <= 3 else cls.UNKNOWN


@dataclass(frozen=True, slots=True)
class PerfValue:
    """One performance data item.

    Attributes:
        label: the label, unquoted.
        value: the value as printed, None for ``U`` (undetermined).
        uom: the unit as printed (``s``, ``ms``, ``%``, ``B``, ``KB``, ``c``...), or "".
    """

    label: str
    value: float | None
    uom: str


@dataclass(frozen=True, slots=True)
class PluginOutput:
    """A plugin's stdout, parsed.

    Attributes:
        text: the first line's text, before any ``|``.
        long_text: the later lines' text, before their first ``|``.
        perfdata: the items that parsed, at most :data:`MAX_PERFDATA`, labels unique.
        problems: one reason per item skipped.
    """

    text: str
    long_text: str
    perfdata: tuple[PerfValue, ...]
    problems: tuple[str, ...]


def parse_plugin_output(output: str) -> PluginOutput:
    """Split a plugin's output into text, long text and perfdata."""
    first, _, rest = output.partition("\n")
    text, _, perf = first.partition("|")
    long_text, bar, more = rest.partition("|")
    if bar:
        perf = f"{perf} {more}"
    values, problems = parse_perfdata(perf)
    return PluginOutput(text.strip(), long_text.strip(), tuple(values), tuple(problems))


def parse_perfdata(text: str) -> tuple[list[PerfValue], list[str]]:
    """Parse space-separated perfdata items; returns (items, reasons for skipped ones)."""
    values: list[PerfValue] = []
    problems: list[str] = []
    seen: set[str] = set()
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos >= end:
            break
        label, pos, problem = _label(text, pos)
        token_end = pos
        while token_end < end and not text[token_end].isspace():
            token_end += 1
        token, pos = text[pos:token_end], token_end
        if problem is None:
            item, problem = _item(label, token)
            if item is not None and item.label in seen:
                item, problem = None, f"{label!r}: duplicate label"
            elif item is not None and len(seen) >= MAX_PERFDATA:
                item, problem = None, f"{label!r}: more than {MAX_PERFDATA} items"
            if item is not None:
                seen.add(item.label)
                if item.value is not None:
                    values.append(item)
        if problem is not None:
            problems.append(problem)
    return values, problems


def _label(text: str, pos: int) -> tuple[str, int, str | None]:
    """Read ``label=`` or ``'label'=`` at ``pos``; returns (label, pos after '=', problem)."""
    end = len(text)
    if text[pos] == "'":
        chars: list[str] = []
        pos += 1
        while pos < end:
            if text[pos] == "'":
                if text.startswith("''", pos):
                    chars.append("'")
                    pos += 2
                    continue
                break
            chars.append(text[pos])
            pos += 1
        label = "".join(chars)
        if pos >= end:
            return label, end, f"{label[:40]!r}: unterminated quote"
        pos += 1
        if not text.startswith("=", pos):
            return label, pos, f"{label!r}: '=' expected after the quoted label"
        return label, pos + 1, None
    start = pos
    while pos < end and text[pos] != "=" and not text[pos].isspace():
        pos += 1
    label = text[start:pos]
    if pos >= end or text[pos] != "=":
        return label, pos, f"{label[:40]!r}: no '=value'"
    return label, pos + 1, None


def _item(label: str, token: str) -> tuple[PerfValue | None, str | None]:
    if not label:
        return None, f"{('=' + token)[:40]!r}: empty label"
    fields = token.split(";")
    if len(fields) > 5:
        return None, f"{label!r}: more than value;warn;crit;min;max"
    match = _VALUE.fullmatch(fields[0])
    if match is None:
        return None, f"{label!r}: value {fields[0][:40]!r} is not a number with a unit"
    number, uom = match.groups()
    return PerfValue(label, None if number == "U" else float(number), uom), None

"""Rendering: rich tables on a terminal, plain aligned text when piped, JSON on request."""

from __future__ import annotations

import errno
import io
import json

import pytest
from rich.console import Console

from relayctl.output import GuardedStream, Output, OutputError, cell, plain_table


def outputs(terminal: bool, json_mode: bool = False) -> tuple[Output, io.StringIO]:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=100, highlight=False)
    err = Console(file=io.StringIO(), force_terminal=terminal)
    return Output(json_mode=json_mode, console=console, err_console=err), buffer


def test_cell_flattens_values_to_one_line() -> None:
    assert cell(None) == "-"
    assert cell([]) == "-"
    assert cell(["a@x", "b@y"]) == "a@x,b@y"
    assert cell("line one\r\nline\ttwo") == "line one line two"
    assert cell({"k": 1}) == '{"k":1}'
    assert cell(3) == "3"


def test_plain_table_aligns_columns_without_trailing_blanks() -> None:
    text = plain_table(("ID", "STATUS"), [("msg-1", "sent"), ("msg-22", "-")])
    assert text.splitlines() == ["ID      STATUS", "msg-1   sent", "msg-22  -"]


def test_piped_table_is_plain_text() -> None:
    out, buffer = outputs(terminal=False)
    out.table(("ID", "STATUS", "SUBJECT"), [("msg-1", "failed", "[bold]hi[/bold]")])
    lines = buffer.getvalue().splitlines()
    assert lines[0].split() == ["ID", "STATUS", "SUBJECT"]
    assert lines[1].split() == ["msg-1", "failed", "[bold]hi[/bold]"]
    assert "\x1b[" not in buffer.getvalue()


def test_terminal_table_is_coloured_and_keeps_markup_literal() -> None:
    out, buffer = outputs(terminal=True)
    out.table(("ID", "STATUS", "SUBJECT"), [("msg-1", "failed", "[bold]hi[/bold]")])
    text = buffer.getvalue()
    assert "\x1b[31mfailed" in text  # red
    # A subject is data, never rich markup.
    assert "[bold]hi[/bold]" in text


def test_json_is_indented_and_keeps_key_order() -> None:
    out, buffer = outputs(terminal=True, json_mode=True)
    out.json({"z": 1, "a": [None]})
    assert buffer.getvalue() == '{\n  "z": 1,\n  "a": [\n    null\n  ]\n}\n'
    assert json.loads(buffer.getvalue()) == {"z": 1, "a": [None]}


def test_fields_align_keys() -> None:
    out, buffer = outputs(terminal=False)
    out.fields([("id", "msg-1"), ("status", "sent"), ("error", None)])
    assert buffer.getvalue().splitlines() == ["id:     msg-1", "status: sent", "error:  -"]


def test_notes_only_reach_a_terminal() -> None:
    piped, _ = outputs(terminal=False)
    piped.note("1-1 of 1")
    assert piped.err_console.file.getvalue() == ""  # type: ignore[attr-defined]
    tty, _ = outputs(terminal=True)
    tty.note("1-1 of 1")
    assert "1-1 of 1" in tty.err_console.file.getvalue()  # type: ignore[attr-defined]


def test_json_escapes_what_the_stream_cannot_carry() -> None:
    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    out = Output(json_mode=True, console=Console(file=ascii_out), err_console=Console())
    out.json({"subject": "Résumé"})
    assert raw.getvalue() == b'{\n  "subject": "R\\u00e9sum\\u00e9"\n}\n'
    utf8_buffer = io.StringIO()
    readable = Output(json_mode=True, console=Console(file=utf8_buffer), err_console=Console())
    readable.json({"subject": "Résumé"})
    assert utf8_buffer.getvalue() == '{\n  "subject": "Résumé"\n}\n'


class FullDisk(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_guarded_stream_marks_failed_writes_as_output_errors() -> None:
    stream = GuardedStream(FullDisk())
    with pytest.raises(OutputError) as caught:
        stream.write("x")
    assert (caught.value.errno, caught.value.strerror) == (errno.ENOSPC, "No space left on device")
    assert stream.isatty() is False  # everything else is the stream's

"""Rendering: rich tables on a terminal, plain aligned text when piped, JSON on request."""

from __future__ import annotations

import io
import json

from rich.console import Console

from relayctl.output import Output, cell, plain_table


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

"""Rendering of command results: rich on a terminal, plain aligned text when piped, or JSON.

Data goes to stdout, diagnostics to stderr. Plain text is one record per line with
whitespace-free cells where possible, so ``awk``/``cut`` work on it; ``--json`` is the
stable, documented shape for scripts.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

STATUS_STYLES = {
    "queued": "yellow",
    "scheduled": "cyan",
    "processing": "blue",
    "sent": "green",
    "delivered": "bold green",
    "failed": "red",
    "auth_error": "bold red",
    "cancelled": "dim",
}

EMPTY = "-"
UNBROKEN_COLUMNS = frozenset({"ID", "STATUS", "OUTCOME"})


def cell(value: Any) -> str:
    """One value as a single-line cell: lists joined by commas, None as "-"."""
    if value is None or value == "" or value == []:
        return EMPTY
    if isinstance(value, list | tuple):
        return ",".join(cell(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    # A newline inside a cell would split one record over two lines of piped output.
    return " ".join(str(value).split())


def encodable(text: str, stream: Any) -> bool:
    """Whether ``stream`` (a text file) can write ``text`` without replacing characters."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    except LookupError:  # an encoding Python does not know: let the stream decide
        return True
    return True


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned with two spaces, header first, no trailing blanks."""
    widths = [len(name) for name in columns]
    for row in rows:
        widths = [max(width, len(value)) for width, value in zip(widths, row, strict=True)]
    lines = []
    for row in [list(columns), *rows]:
        padded = (value.ljust(width) for value, width in zip(row, widths, strict=True))
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


class OutputError(OSError):
    """Writing relayctl's own output (stdout or stderr) failed: a closed pipe, a full disk.

    Raised by :class:`GuardedStream`, so the entry point can tell a failed write of the
    output from any other OSError.
    """


class GuardedStream:
    """A text stream whose failed writes raise :class:`OutputError` (same errno, same reason).

    Everything else (``isatty``, ``encoding``, ``fileno``, ``buffer``...) is the wrapped
    stream's, so rich and Click use it like the stream itself.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            written: int = self._stream.write(text)
        except OSError as exc:
            raise OutputError(exc.errno, exc.strerror) from exc
        return written

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise OutputError(exc.errno, exc.strerror) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class PipeConsole(Console):
    """A rich Console that lets a closed pipe surface as BrokenPipeError.

    rich's default exits 1 on its own; relayctl's entry point handles a closed stdout the
    same way wherever the write happened (relayctl.main).
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


class Output:
    """Where a command writes its results; ``json_mode`` selects JSON over text."""

    def __init__(
        self,
        json_mode: bool = False,
        console: Console | None = None,
        err_console: Console | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.console = console or PipeConsole(highlight=False)
        self.err_console = err_console or PipeConsole(stderr=True, highlight=False)

    @property
    def rich(self) -> bool:
        """True when stdout is a terminal: tables with borders and colours."""
        return self.console.is_terminal

    def json(self, data: Any) -> None:
        """Write ``data`` as indented JSON (keys in the API's order).

        Text stays readable (``"é"``) unless stdout's encoding cannot carry it
        (``PYTHONIOENCODING=ascii``, a C locale): then it is escaped (``"\\u00e9"``), which
        is the same JSON, rather than replaced.
        """
        text = json.dumps(data, indent=2, ensure_ascii=False)
        if not encodable(text, self.console.file):
            text = json.dumps(data, indent=2, ensure_ascii=True)
        self.console.file.write(text + "\n")
        self.console.file.flush()

    def line(self, text: str, style: str | None = None) -> None:
        """One line of text, styled only on a terminal."""
        if self.rich:
            self.console.print(Text(text, style=style or ""))
        else:
            self.console.file.write(text + "\n")

    def note(self, text: str) -> None:
        """A remark for the human at a terminal (page counts...); omitted when piped."""
        if self.rich:
            self.err_console.print(Text(text, style="dim"))

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        title: str | None = None,
        status_column: str | None = "STATUS",
    ) -> None:
        """A table of records; the status column is coloured on a terminal."""
        cells = [[cell(value) for value in row] for row in rows]
        if not self.rich:
            if title:
                self.console.file.write(title + "\n")
            self.console.file.write(plain_table(columns, cells) + "\n")
            return
        table = Table(
            title=title,
            box=box.SIMPLE_HEAD,
            title_justify="left",
            title_style="bold",
            pad_edge=False,
        )
        for name in columns:
            # Ids and times must stay copyable; free text folds instead.
            unbroken = name in UNBROKEN_COLUMNS
            table.add_column(
                name, overflow="fold", no_wrap=unbroken, min_width=None if unbroken else 5
            )
        status_index = columns.index(status_column) if status_column in columns else -1
        for row in cells:
            table.add_row(
                *(
                    Text(value, style=STATUS_STYLES.get(value, "") if i == status_index else "")
                    for i, value in enumerate(row)
                )
            )
        self.console.print(table)

    def fields(self, pairs: Sequence[tuple[str, Any]], title: str | None = None) -> None:
        """Aligned ``key: value`` lines (a record's details)."""
        rows = [(name, cell(value)) for name, value in pairs]
        width = max((len(name) for name, _ in rows), default=0) + 1
        if title:
            self.line(title, style="bold")
        for name, value in rows:
            if self.rich:
                text = Text(f"{name}:".ljust(width) + " ", style="bold")
                text.append(value, style=STATUS_STYLES.get(value, "") if name == "status" else "")
                self.console.print(text)
            else:
                self.console.file.write(f"{name}:".ljust(width) + f" {value}\n")

    def mapping(self, values: Mapping[str, Any], title: str) -> None:
        """A header-like mapping (``Name: value``) under a title; nothing when empty."""
        if values:
            self.blank()
            self.fields(list(values.items()), title=title)

    def blank(self) -> None:
        """An empty separator line."""
        if self.rich:
            self.console.print()
        else:
            self.console.file.write("\n")

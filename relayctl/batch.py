"""Row-by-row operations (CSV send, CSV import): a progress bar, per-row errors, a summary;
and the hint under a listed page that is not the whole list.

Each row is one API call, so a refused row is refused whole and the others go on;
only losing the daemon (unreachable, token refused) stops the run.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from relayctl.context import ExitCode, exit_with
from relayctl.errors import AuthError, RelayError, UnreachableError
from relayctl.output import Output


@dataclass(frozen=True)
class RowResult:
    """What happened to one row (numbered from 2: line 1 is the CSV header)."""

    row: int
    key: str
    ok: bool
    detail: str
    code: str | None = None

    def to_json(self, ok_field: str) -> dict[str, Any]:
        if self.ok:
            return {"row": self.row, "email": self.key, ok_field: self.detail}
        return {"row": self.row, "email": self.key, "error": self.detail, "code": self.code}


def read_csv(path: Path) -> list[dict[str, str]]:
    """The CSV's rows; a missing ``email`` column or a row longer than the header is a usage
    error."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            if "email" not in columns:
                exit_with(
                    f"relayctl: {path} has no 'email' column (columns: {', '.join(columns)})",
                    ExitCode.USAGE,
                )
            rows = []
            for row in reader:
                if None in row:  # DictReader keeps surplus fields as a list under None
                    exit_with(
                        f"relayctl: {path} line {reader.line_num} has more fields than the header",
                        ExitCode.USAGE,
                    )
                rows.append({k.strip(): (v or "").strip() for k, v in row.items()})
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        exit_with(f"relayctl: cannot read {path}: {exc}", ExitCode.USAGE)


def run_rows(
    out: Output,
    label: str,
    rows: Sequence[dict[str, str]],
    action: Callable[[dict[str, str]], str],
) -> list[RowResult]:
    """Apply ``action`` to every row; its return value is the row's detail (an id...)."""
    results: list[RowResult] = []
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=out.err_console,
        transient=True,
        disable=not out.err_console.is_terminal,
    )
    with progress:
        task = progress.add_task(label, total=len(rows))
        for number, row in enumerate(rows, start=2):
            key = row.get("email", "")
            try:
                results.append(RowResult(number, key, True, action(row)))
            except (UnreachableError, AuthError):
                raise  # nothing else will work either
            except RelayError as exc:
                results.append(RowResult(number, key, False, exc.message, exc.code))
            progress.advance(task)
    return results


def summarize(
    out: Output, results: Sequence[RowResult], ok_word: str, bad_word: str, ok_field: str
) -> int:
    """Print the summary (or JSON) and return the exit code: 0 all, 6 some, 1 none."""
    good = [r for r in results if r.ok]
    bad = [r for r in results if not r.ok]
    if out.json_mode:
        out.json(
            {
                ok_word: len(good),
                bad_word: len(bad),
                "results": [r.to_json(ok_field) for r in results],
            }
        )
    else:
        if bad:
            out.table(
                ("ROW", "EMAIL", "CODE", "ERROR"),
                [(r.row, r.key, r.code, r.detail) for r in bad],
                title=f"{bad_word.capitalize()} rows",
                status_column=None,
            )
            out.blank()
        out.table(
            ("OUTCOME", "COUNT"),
            [(ok_word, len(good)), (bad_word, len(bad))],
            status_column=None,
        )
    if not bad:
        return 0
    return 6 if good else 1


def page_hint(out: Output, page: dict[str, Any], shown: int, offset: int) -> bool:
    """When a list shows fewer rows than the API's ``pagination.total``, say so on stderr
    (piped too, as stdout's rows are all a script sees; never with --json, whose document
    has the pagination). Returns whether it did."""
    pagination = page.get("pagination")
    total = pagination.get("total") if isinstance(pagination, dict) else None
    if out.json_mode or not isinstance(total, int) or shown >= total:
        return False
    if shown == 0:
        where = f"none of {total} at offset {offset}"
    elif offset:
        rows = f"{offset + 1}" if shown == 1 else f"{offset + 1}-{offset + shown}"
        where = f"{rows} of {total}"
    else:
        where = f"{shown} of {total}"
    out.err_console.print(
        Text(f"showing {where}; use --limit/--offset", style="dim"), soft_wrap=True
    )
    return True

"""Generate relayctl's shell completion scripts from the Typer app.

    python completions/generate.py          # (re)write completions/relayctl.{bash,zsh,fish}
    python completions/generate.py --check  # exit 1 when a file on disk is stale

The scripts come from Typer's own completion machinery (``_RELAYCTL_COMPLETE=source_<shell>``),
run in-process, so relayctl need not be installed to regenerate them.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The checkout's relayctl, not an older installed copy, is what the scripts must match.
sys.path.insert(0, str(HERE.parent))

from typer.testing import CliRunner  # noqa: E402

from relayctl.main import app  # noqa: E402

PROG = "relayctl"
COMPLETE_VAR = "_RELAYCTL_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


def render(shell: str) -> str:
    """The completion script for ``shell``, as ``relayctl`` itself would print it."""
    result = CliRunner().invoke(
        app, [], env={COMPLETE_VAR: f"source_{shell}"}, prog_name=PROG, catch_exceptions=False
    )
    if result.exit_code != 0 or not result.stdout.strip():
        raise RuntimeError(f"completion for {shell} failed: {result.output.strip()}")
    return result.stdout.strip() + "\n"


def target(shell: str) -> Path:
    """Where the script for ``shell`` lives in the repository."""
    return HERE / f"{PROG}.{shell}"


def stale() -> list[Path]:
    """Files whose content differs from what the app generates now."""
    return [
        target(shell)
        for shell in SHELLS
        if not target(shell).exists() or target(shell).read_text() != render(shell)
    ]


def main(argv: list[str]) -> int:
    """Write the scripts, or with ``--check`` report the stale ones."""
    if "--check" in argv:
        outdated = stale()
        for path in outdated:
            print(f"stale: {path} (run: python completions/generate.py)", file=sys.stderr)
        return 1 if outdated else 0
    for shell in SHELLS:
        target(shell).write_text(render(shell))
        print(f"wrote {target(shell)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The shipped completion scripts match the app, and completion really completes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from tests.relayctl.conftest import run

ROOT = Path(__file__).resolve().parents[2]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "completions" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_completion_scripts_are_current() -> None:
    gen = generator()
    for shell in gen.SHELLS:
        path = ROOT / "completions" / f"relayctl.{shell}"
        assert path.exists(), f"{path} missing: run python completions/generate.py"
        assert path.read_text() == gen.render(shell), (
            f"{path} is stale: run python completions/generate.py"
        )
    assert gen.stale() == []


def test_scripts_call_back_into_relayctl() -> None:
    bash = (ROOT / "completions" / "relayctl.bash").read_text()
    assert "_RELAYCTL_COMPLETE=complete_bash" in bash
    assert "complete -o default -F _relayctl_completion relayctl" in bash


def complete_bash(words: str) -> list[str]:
    env = {"_RELAYCTL_COMPLETE": "complete_bash", "COMP_WORDS": words}
    env["COMP_CWORD"] = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    result = run([], env)
    return result.stdout.split()


def test_bash_completion_completes_commands_options_and_statuses() -> None:
    assert complete_bash("relayctl qu") == ["queue"]
    assert set(complete_bash("relayctl queue ")) >= {"ls", "show", "retry", "cancel"}
    assert complete_bash("relayctl queue ls --status auth") == ["auth_error"]
    assert "--subject" in complete_bash("relayctl send --su")

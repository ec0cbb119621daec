"""`providers validate` refuses incomplete input before calling the daemon (exit 2).

The provider routes themselves (issue 5) are exercised once they exist.
"""

from __future__ import annotations

from tests.relayctl.conftest import run


def test_validate_needs_its_inputs(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    gmail = run(["--url", url, "providers", "validate", "gmail"])
    assert gmail.exit_code == 2
    assert gmail.stderr == "relayctl: validate gmail needs --service-account FILE\n"
    mailgun = run(["--url", url, "providers", "validate", "mailgun", "--domain", "mg.example.com"])
    assert mailgun.exit_code == 2
    assert "$MAILGUN_API_KEY" in mailgun.stderr
    unknown = run(["--url", url, "providers", "validate", "sendmail"])
    assert unknown.exit_code == 2

"""Personalization: ``{{ variable }}`` templates in a message's subject and bodies.

Templates run in jinja2's ``SandboxedEnvironment`` (no attribute tricks, no
access to Python internals) with ``StrictUndefined``, so a variable the sender
did not supply is an error naming it, never a silent blank. HTML bodies
autoescape the values substituted into them.
"""

from __future__ import annotations

import re
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError, meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

MAX_OUTPUT = 50 * 1024 * 1024
_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined")


class PersonalizationError(Exception):
    """A template could not be rendered; ``field`` is where, ``variable`` what was missing."""

    def __init__(self, field: str, message: str, variable: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.variable = variable


class _BoundedEnvironment(SandboxedEnvironment):
    """The sandbox, also refusing the arithmetic that builds huge values (``'a' * 10**9``)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            raise SecurityError("the power operator is not allowed")
        sizes = [len(v) for v in (left, right) if isinstance(v, str | list | tuple)]
        counts = [v for v in (left, right) if isinstance(v, int)]
        if sizes and counts and sizes[0] * max(counts) > MAX_OUTPUT:
            raise SecurityError("the repeated value would be too large")
        return super().call_binop(context, operator, left, right)


def _environment(autoescape: bool) -> SandboxedEnvironment:
    return _BoundedEnvironment(
        undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=True
    )


_PLAIN = _environment(False)
_HTML = _environment(True)


def render(field: str, template: str, variables: dict[str, Any], html: bool = False) -> str:
    """Render one template; raises PersonalizationError naming the field and variable."""
    if "{" not in template:  # nothing to substitute: skip parsing (the common case)
        return template
    environment = _HTML if html else _PLAIN
    try:
        parsed = environment.parse(template)
        undeclared = meta.find_undeclared_variables(parsed)  # compiles: may raise too
    except TemplateError as exc:
        raise PersonalizationError(field, f"{field} is not a valid template: {exc}") from None
    missing = sorted(undeclared - set(variables))
    if missing:
        raise PersonalizationError(
            field,
            f"{field} uses variable {missing[0]!r}, which personalization.variables lacks",
            missing[0],
        )
    try:
        output = environment.from_string(parsed).render(variables)
    except UndefinedError as exc:
        found = _UNDEFINED_NAME.search(str(exc))
        raise PersonalizationError(
            field, f"{field}: {exc}", found.group(1) if found else None
        ) from None
    except SecurityError as exc:
        raise PersonalizationError(
            field, f"{field} does something templates may not: {exc}"
        ) from None
    except (TemplateError, ArithmeticError, TypeError, ValueError) as exc:
        raise PersonalizationError(field, f"{field} could not be rendered: {exc}") from None
    if len(output) > MAX_OUTPUT:
        raise PersonalizationError(field, f"{field} renders larger than {MAX_OUTPUT} bytes")
    return output


def personalize(
    subject: str, text_body: str | None, html_body: str | None, variables: dict[str, Any]
) -> tuple[str, str | None, str | None]:
    """Subject and bodies with ``variables`` substituted."""
    return (
        render("subject", subject, variables),
        None if text_body is None else render("text_body", text_body, variables),
        None if html_body is None else render("html_body", html_body, variables, html=True),
    )

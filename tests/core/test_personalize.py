"""Personalization templates: sandboxed, strict about missing variables, HTML-escaped."""

from __future__ import annotations

import pytest

from daemon.core.personalize import PersonalizationError, personalize, render


def test_variables_fill_subject_and_bodies() -> None:
    assert personalize(
        "Hi {{ first_name }}",
        "Dear {{first_name}} {{ last_name }}\n",
        "<b>{{ first_name }}</b>",
        {"first_name": "Ann & <Bo>", "last_name": "Doe"},
    ) == ("Hi Ann & <Bo>", "Dear Ann & <Bo> Doe\n", "<b>Ann &amp; &lt;Bo&gt;</b>")


def test_text_without_templates_is_untouched() -> None:
    assert render("subject", "plain {text}", {}) == "plain {text}"


def test_missing_variable_is_named() -> None:
    with pytest.raises(PersonalizationError) as missing:
        personalize("Hi {{ first_name }}", None, None, {"last_name": "Doe"})
    assert missing.value.field == "subject"
    assert missing.value.variable == "first_name"
    with pytest.raises(PersonalizationError) as nested:
        render("text_body", "{{ user.nickname }}", {"user": {}})
    assert nested.value.field == "text_body"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ x.__init__.__globals__ }}",
        "{{ 'a' * 100000000 }}",
        "{{ 9 ** 9 ** 9 }}",
        "{% for %}",
        "{{ x | nosuchfilter }}",
        "{{ 1 / 0 }}",
    ],
)
def test_unsafe_or_broken_templates_are_refused(template: str) -> None:
    with pytest.raises(PersonalizationError):
        render("html_body", template, {"x": 1})

"""MAIL/RCPT parameter parsing, as tables (the wire-level replies are in test_protocol.py)."""

from __future__ import annotations

import pytest

from daemon.smtp.params import (
    MailParams,
    ParamError,
    RcptParams,
    decode_xtext,
    mail_params,
    parse_params,
    rcpt_params,
)


@pytest.mark.parametrize(
    ("text", "decoded"),
    [("plain", "plain"), ("a+2Bb", "a+b"), ("+3D+20x", "= x"), ("a+2bb", "a+b"), ("", "")],
)
def test_decode_xtext(text: str, decoded: str) -> None:
    assert decode_xtext(text) == decoded


@pytest.mark.parametrize("text", ["a+2", "a+zz", "a=b", "tab\there", "é"])
def test_decode_xtext_refuses_malformed(text: str) -> None:
    with pytest.raises(ParamError):
        decode_xtext(text)


def test_parse_params_keeps_value_case() -> None:
    assert parse_params("size=10 EnvId=AbC body=8bitmime XFLAG") == {
        "SIZE": "10",
        "ENVID": "AbC",
        "BODY": "8bitmime",
        "XFLAG": None,
    }


@pytest.mark.parametrize("text", ["SIZE=", "=1", "-X=1", "SI_ZE=1", "SIZE=1 size=2"])
def test_parse_params_refuses_malformed(text: str) -> None:
    with pytest.raises(ParamError) as info:
        parse_params(text)
    assert str(info.value).startswith("501 5.5.4 ")


def test_mail_params() -> None:
    parsed = mail_params(parse_params("SIZE=10 BODY=8bitmime RET=hdrs ENVID=id+2B1"), 100)
    assert parsed == MailParams(size=10, body="8BITMIME", ret="HDRS", envid="id+1")
    assert mail_params({}, 100) == MailParams()


def test_size_over_the_limit_is_552() -> None:
    with pytest.raises(ParamError) as info:
        mail_params({"SIZE": "101"}, 100)
    assert str(info.value).startswith("552 5.3.4 ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NOTIFY=never", RcptParams(notify="NEVER")),
        ("NOTIFY=FAILURE,SUCCESS", RcptParams(notify="FAILURE,SUCCESS")),
        ("ORCPT=RFC822;a+40b.example", RcptParams(orcpt="rfc822;a@b.example")),
        ("", RcptParams()),
    ],
)
def test_rcpt_params(text: str, expected: RcptParams) -> None:
    assert rcpt_params(parse_params(text)) == expected


@pytest.mark.parametrize(
    "text",
    ["NOTIFY=NEVER,DELAY", "NOTIFY=SUCCESS,SUCCESS", "NOTIFY=ALWAYS", "ORCPT=;x", "ORCPT=x"],
)
def test_rcpt_params_refuse_malformed(text: str) -> None:
    with pytest.raises(ParamError):
        rcpt_params(parse_params(text))

"""Loopback fakes of the provider APIs: Mailgun, Google OAuth + Gmail, SendGrid.

Each is a real HTTP server on 127.0.0.1 (Starlette under uvicorn, in the test's
event loop) that checks every request the way the real API documents it:
method, path, authentication, content type and body fields. A request that
does not match is answered 400 and recorded in ``fake.problems`` (the fixtures
assert it stays empty). Tests steer the answers::

    fake.script(Answer(503), Answer(429))   # the next two calls, then the default
    fake.default = Answer(500)              # every call from now on
    Answer(200, delay=2.0)                  # slowly
    Answer(hang=True)                       # never answer (until the client gives up)

``python -m tests.providers.fakes mailgun --port 8025`` serves the Mailgun fake
on its own (the delivery benchmark uses it that way).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from email.errors import NonASCIILocalPartDefect
from email.policy import default as default_policy
from typing import Any, Self, cast
from urllib.parse import parse_qs

import jwt
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Gmail's metadata URI refuses JSON bodies past a few MB with 413
# (googleapis/google-api-go-client#374: around 6.5 MB of message); the fake says 5 MiB.
METADATA_LIMIT = 5 * 1024 * 1024
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
# SendGrid's reserved ``headers`` keys (Mail Send reference: "You may not override the
# following headers").
SENDGRID_RESERVED = {
    "x-sg-id",
    "x-sg-eid",
    "received",
    "dkim-signature",
    "content-type",
    "content-transfer-encoding",
    "to",
    "from",
    "subject",
    "reply-to",
    "cc",
    "bcc",
}


# Mail Send errors: an attachment's filename, content_id and type (and a content
# type) "may not include the characters ';', ',', CR or LF".
SENDGRID_FORBIDDEN = frozenset(";,\r\n")


@dataclass(frozen=True)
class Answer:
    """How the fake answers one call: ``status`` None means the endpoint's success."""

    status: int | None = None
    delay: float = 0.0
    hang: bool = False
    body: Any = None
    headers: dict[str, str] | None = None


class _Problem(Exception):
    pass


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


Handler = Callable[[Request], Awaitable[Response]]


class FakeApi:
    """A provider API fake on a loopback port; subclasses add the routes."""

    name = "fake"

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.default = Answer()
        self._script: deque[Answer] = deque()
        self._ids = itertools.count(1)
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self._release = asyncio.Event()

    # -- steering ------------------------------------------------------------------

    def script(self, *answers: Answer) -> None:
        self._script.extend(answers)

    def _next(self) -> Answer:
        return self._script.popleft() if self._script else self.default

    def record(
        self, request: Request, data: dict[str, Any], accept: Callable[[], None] | None = None
    ) -> None:
        """Log a well-formed call; ``accept`` runs if the call is finally answered 2xx."""
        data.update(at=time.monotonic(), status=None, accept=accept)
        request.state.record = data
        self.requests.append(data)

    def calls(self, path_suffix: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith(path_suffix)]

    # -- serving -------------------------------------------------------------------

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def endpoint(self, handler: Handler, answers: bool = True) -> Handler:
        """Wrap a handler: record, check shape, then apply the scripted answer."""

        async def run(request: Request) -> Response:
            try:
                response = await handler(request)
            except _Problem as exc:
                self.problems.append(f"{request.method} {request.url.path}: {exc}")
                return JSONResponse({"message": f"fake: {exc}"}, status_code=400)
            if answers and response.status_code < 300:
                answer = self._next()
                if answer.hang:
                    await self._release.wait()
                    response = PlainTextResponse("gone", status_code=503)
                else:
                    if answer.delay:
                        await asyncio.sleep(answer.delay)
                    if answer.status is not None:
                        body = answer.body if answer.body is not None else {"message": "fake"}
                        response = JSONResponse(
                            body, status_code=answer.status, headers=answer.headers
                        )
            record = getattr(request.state, "record", None)
            if record is not None:
                record["status"] = response.status_code
                if response.status_code < 300 and record.get("accept"):
                    record.pop("accept")()
            return response

        return run

    @property
    def port(self) -> int:
        assert self._socket is not None
        return int(self._socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> Self:
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self._socket.listen(1024)
        config = uvicorn.Config(
            Starlette(routes=self.routes()),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = _Uvicorn(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                await self._task
            await asyncio.sleep(0.005)
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        if self._socket is not None:
            self._socket.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise _Problem(problem)


def _multipart(ctype: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/form-data body, byte for byte (RFC 7578)."""
    boundary = _param(ctype, "boundary")
    _expect(bool(boundary), "no boundary")
    delimiter = b"--" + str(boundary).encode()
    chunks = body.split(delimiter)
    _expect(chunks[-1].startswith(b"--"), "no closing delimiter")
    parts = []
    for chunk in chunks[1:-1]:
        _expect(chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n"), "bad part framing")
        head, sep, content = chunk[2:-2].partition(b"\r\n\r\n")
        _expect(bool(sep), "part without headers")
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


def _param(header: str, name: str) -> str | None:
    for item in header.split(";")[1:]:
        key, _, value = item.strip().partition("=")
        if key.lower() == name:
            return value.strip('"')
    return None


def _address_list(value: str) -> list[str]:
    """The addr-specs of a Mailgun ``to`` field: an RFC 5322 address list ("Bob <bob@host.com>",
    commas between recipients); SMTPUTF8 local parts are accepted (Mailgun's
    Internationalization guide)."""
    header = default_policy.header_factory("to", value)
    defects = [d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)]
    addresses = [a.addr_spec for a in header.addresses]
    _expect(
        bool(addresses) and not defects and all(a.domain for a in header.addresses),
        f"'to' parameter is not a valid address: {value!r} ({defects})",
    )
    return addresses


def _sendgrid_email(email: str, where: str, longest: int = 0) -> None:
    """A Mail Send ``email`` field: ``format: email`` in SendGrid's OpenAPI schema, an
    RFC 5321 address in ASCII (internationalized domains as punycode; the schema does not
    use ``idn-email``), at most ``longest`` characters where the errors list says so."""
    local, at, domain = email.rpartition("@")
    _expect(bool(at and local and domain), f"{where}: not a valid email address")
    _expect(email.isascii(), f"{where}: does not contain a valid address (non-ASCII)")
    _expect(not longest or len(email) <= longest, f"{where}: longer than {longest} characters")


def _basic(request: Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    user, _, password = base64.b64decode(value).decode().partition(":")
    return user, password


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value if scheme == "Bearer" and value else None


class MailgunFake(FakeApi):
    """``/v3/{domain}/messages.mime``, ``/v3/domains/{domain}``, ``/v3/domains``."""

    name = "mailgun"

    def __init__(self, api_key: str = "key-test", domain: str = "mg.example.com") -> None:
        super().__init__()
        self.api_key = api_key
        self.domains: dict[str, str] = {domain: "active"}  # name -> state
        self.dns_valid = {"MX": True, "TXT": True, "CNAME": True}
        self.messages: list[tuple[list[str], bytes]] = []

    def routes(self) -> list[Route]:
        return [
            Route(
                "/v3/{domain}/messages.mime",
                self.endpoint(self.send),
                methods=["POST"],
            ),
            Route("/v3/domains/{domain}", self.endpoint(self.domain), methods=["GET"]),
            Route("/v3/domains", self.endpoint(self.list_domains), methods=["GET"]),
        ]

    def _authorized(self, request: Request) -> Response | None:
        credentials = _basic(request)
        _expect(credentials is not None, "no HTTP basic auth")
        if credentials != ("api", self.api_key):
            return PlainTextResponse("Forbidden", status_code=401)
        return None

    async def send(self, request: Request) -> Response:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        ctype = request.headers.get("content-type", "")
        _expect(ctype.startswith("multipart/form-data; boundary="), f"content type {ctype!r}")
        to: list[str] = []
        mime: bytes | None = None
        for headers, content in _multipart(ctype, await request.body()):
            disposition = headers.get("content-disposition", "")
            _expect(disposition.startswith("form-data;"), f"part disposition {disposition!r}")
            name = _param(disposition, "name")
            if name == "to":
                to += _address_list(content.decode())
            elif name == "message":
                _expect(_param(disposition, "filename") is not None, "message is not a file")
                mime = content
            else:
                raise _Problem(f"unexpected form field {name!r}")
        _expect(bool(to), "no 'to' field")
        _expect(len(to) <= 1000, f"{len(to)} recipients: Mailgun takes at most 1,000")
        _expect(mime is not None, "no 'message' file")
        domain = request.path_params["domain"]
        if domain not in self.domains:
            return JSONResponse({"message": "Domain not found"}, status_code=404)
        assert mime is not None
        self.record(
            request,
            {"path": request.url.path, "to": to, "message": mime},
            lambda: self.messages.append((to, mime)),
        )
        mid = f"<20240115.{next(self._ids)}@{domain}>"
        return JSONResponse({"id": mid, "message": "Queued. Thank you."})

    def _records(self, domain: str) -> dict[str, Any]:
        def valid(kind: str) -> str:
            return "valid" if self.dns_valid[kind] else "unknown"

        return {
            "receiving_dns_records": [
                {"record_type": "MX", "priority": "10", "value": "mxa.mailgun.org",
                 "valid": valid("MX"), "cached": []},
            ],
            "sending_dns_records": [
                {"record_type": "TXT", "name": domain, "value": "v=spf1 include:mailgun.org ~all",
                 "valid": valid("TXT"), "cached": []},
                {"record_type": "TXT", "name": f"k1._domainkey.{domain}", "value": "k=rsa; p=MIGf",
                 "valid": valid("TXT"), "cached": []},
                {"record_type": "CNAME", "name": f"email.{domain}", "value": "mailgun.org",
                 "valid": valid("CNAME"), "cached": []},
            ],
        }  # fmt: skip

    def _domain(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "state": self.domains[name],
            "type": "custom",
            "created_at": "Mon, 01 Jan 2024 00:00:00 GMT",
            "smtp_login": f"postmaster@{name}",
            "smtp_password": "fake-smtp-secret",
            "is_disabled": False,
            "skip_verification": False,
            "spam_action": "disabled",
            "wildcard": False,
        }

    async def domain(self, request: Request) -> Response:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        name = request.path_params["domain"]
        self.record(request, {"path": request.url.path})
        if name not in self.domains:
            return JSONResponse({"message": "Domain not found"}, status_code=404)
        return JSONResponse({"domain": self._domain(name), **self._records(name)})

    async def list_domains(self, request: Request) -> Response:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        self.record(request, {"path": request.url.path, "query": dict(request.query_params)})
        items = [self._domain(name) for name in sorted(self.domains)]
        return JSONResponse({"total_count": len(items), "items": items})


class GoogleFake(FakeApi):
    """Google's OAuth token endpoint (``/token``) and Gmail ``users.messages.send``."""

    name = "google"

    def __init__(self, client_email: str, public_key_pem: bytes, key_id: str) -> None:
        super().__init__()
        self.client_email = client_email
        self.public_key_pem = public_key_pem
        self.key_id = key_id
        self.delegation = True  # domain-wide delegation granted in the Admin console
        self.users = {"alice@example.com", "bob@example.com", "test@example.com"}
        self.tokens: dict[str, str | None] = {}  # access token -> subject
        self.token_answers: deque[Answer] = deque()
        self.sent: list[tuple[str | None, bytes]] = []

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    def routes(self) -> list[Route]:
        return [
            Route("/token", self.endpoint(self.token, answers=False), methods=["POST"]),
            Route(
                "/gmail/v1/users/{user}/messages/send",
                self.endpoint(self.send),
                methods=["POST"],
            ),
            Route(
                "/upload/gmail/v1/users/{user}/messages/send",
                self.endpoint(self.upload),
                methods=["POST"],
            ),
        ]

    def revoke(self) -> None:
        """Every access token handed out so far stops working (expired or revoked)."""
        self.tokens.clear()

    def _error(self, status: int, error: str, description: str) -> Response:
        return JSONResponse({"error": error, "error_description": description}, status)

    async def token(self, request: Request) -> Response:
        ctype = request.headers.get("content-type", "")
        _expect(ctype.startswith("application/x-www-form-urlencoded"), f"content type {ctype!r}")
        form = parse_qs((await request.body()).decode())
        _expect(form.get("grant_type") == [JWT_BEARER], f"grant_type {form.get('grant_type')}")
        assertion = (form.get("assertion") or [""])[0]
        _expect(bool(assertion), "no assertion")
        header = jwt.get_unverified_header(assertion)
        _expect(header.get("alg") == "RS256", f"alg {header.get('alg')}")
        if header.get("kid") != self.key_id:
            return self._error(400, "invalid_grant", "Invalid JWT Signature.")
        try:
            claims = jwt.decode(
                assertion,
                self.public_key_pem,
                algorithms=["RS256"],
                audience=self.token_url,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.InvalidSignatureError:
            return self._error(400, "invalid_grant", "Invalid JWT Signature.")
        except jwt.PyJWTError as exc:
            raise _Problem(f"bad assertion: {exc}") from None
        _expect(claims["exp"] - claims["iat"] <= 3600, "assertion lives longer than an hour")
        if claims["iss"] != self.client_email:
            return self._error(400, "invalid_grant", "Invalid grant: account not found")
        scopes = str(claims["scope"]).split()
        _expect(all(s.startswith("https://www.googleapis.com/auth/") for s in scopes), "scope")
        subject = claims.get("sub")
        self.record(request, {"path": "/token", "sub": subject, "scopes": scopes})
        if self.token_answers:
            answer = self.token_answers.popleft()
            if answer.delay:
                await asyncio.sleep(answer.delay)
            if answer.status is not None:
                return JSONResponse(answer.body or {"error": "internal"}, answer.status)
        if subject is not None:
            if not self.delegation:
                return self._error(
                    401,
                    "unauthorized_client",
                    "Client is unauthorized to retrieve access tokens using this method, or "
                    "client not authorized for any of the scopes requested.",
                )
            if subject not in self.users:
                return self._error(400, "invalid_grant", "Invalid email or User ID")
        access = f"ya29.fake-{next(self._ids)}"
        self.tokens[access] = subject
        return JSONResponse({"access_token": access, "expires_in": 3599, "token_type": "Bearer"})

    def _unauthorized(self, request: Request) -> Response | None:
        token = _bearer(request)
        _expect(token is not None, "no bearer token")
        if token not in self.tokens:
            return JSONResponse(
                {"error": {"code": 401, "message": "Invalid Credentials", "status":
                           "UNAUTHENTICATED"}}, 401,
            )  # fmt: skip
        return None

    async def send(self, request: Request) -> Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        ctype = request.headers.get("content-type", "")
        _expect(ctype.startswith("application/json"), f"content type {ctype!r}")
        payload = await request.body()
        if len(payload) > METADATA_LIMIT:  # what Google answers on the metadata URI
            return PlainTextResponse("Request Entity Too Large", status_code=413)
        body = json.loads(payload)
        _expect(set(body) <= {"raw", "threadId"} and "raw" in body, f"fields {sorted(body)}")
        return self._accept(request, base64.urlsafe_b64decode(body["raw"]))

    async def upload(self, request: Request) -> Response:
        """The media upload URI, ``uploadType=multipart``: JSON metadata, then message/rfc822."""
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        kind = request.query_params.get("uploadType")
        _expect(kind == "multipart", f"uploadType {kind!r}")
        ctype = request.headers.get("content-type", "")
        _expect(ctype.startswith("multipart/related; boundary="), f"content type {ctype!r}")
        parts = _multipart(ctype, await request.body())
        _expect(len(parts) == 2, f"{len(parts)} parts")
        (meta_headers, meta), (media_headers, raw) = parts
        meta_type = meta_headers.get("content-type", "")
        _expect(meta_type.startswith("application/json"), f"metadata type {meta_type!r}")
        _expect(set(json.loads(meta)) <= {"threadId"}, "metadata fields")
        media_type = media_headers.get("content-type")
        _expect(media_type == "message/rfc822", f"media type {media_type!r}")
        _expect(len(raw) <= 35 * 1024 * 1024, "over the 35 MB upload limit")
        return self._accept(request, raw)

    def _accept(self, request: Request, raw: bytes) -> Response:
        token = _bearer(request)
        assert token is not None  # checked by _unauthorized
        user = request.path_params["user"]
        _expect(user == "me" or user == self.tokens[token], f"userId {user}")
        subject = self.tokens[token]
        self.record(
            request,
            {"path": request.url.path, "sub": subject, "raw": raw},
            lambda: self.sent.append((subject, raw)),
        )
        n = next(self._ids)
        return JSONResponse(
            {"id": f"18c{n:013x}", "threadId": f"18c{n:013x}", "labelIds": ["SENT"]}
        )


class SendgridFake(FakeApi):
    """SendGrid v3 ``/v3/mail/send`` and ``/v3/scopes``."""

    name = "sendgrid"

    def __init__(self, api_key: str = "SG.test-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.scopes = ["mail.send", "scopes.read"]
        self.mails: list[dict[str, Any]] = []

    def routes(self) -> list[Route]:
        return [
            Route("/v3/mail/send", self.endpoint(self.send), methods=["POST"]),
            Route("/v3/scopes", self.endpoint(self.get_scopes), methods=["GET"]),
        ]

    def _authorized(self, request: Request) -> Response | None:
        token = _bearer(request)
        _expect(token is not None, "no bearer token")
        if token != self.api_key:
            body = {"errors": [{"field": None, "message": "The provided authorization grant "
                                "is invalid, expired, or revoked"}]}  # fmt: skip
            return JSONResponse(body, status_code=401)
        return None

    async def send(self, request: Request) -> Response:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        ctype = request.headers.get("content-type", "")
        _expect(ctype.startswith("application/json"), f"content type {ctype!r}")
        try:  # Mail Send errors: "Invalid UTF8 in request"
            text = (await request.body()).decode("utf-8")
        except UnicodeDecodeError:
            raise _Problem("Invalid UTF8 in request") from None
        body = json.loads(text)
        self._check_mail(body)
        self.record(
            request, {"path": request.url.path, "body": body}, lambda: self.mails.append(body)
        )
        return Response(
            status_code=202, headers={"X-Message-Id": f"sg-{next(self._ids)}-fakemessageid"}
        )

    def _check_mail(self, body: dict[str, Any]) -> None:
        allowed = {"personalizations", "from", "reply_to", "reply_to_list", "subject",
                   "content", "attachments", "headers"}  # fmt: skip
        _expect(set(body) <= allowed, f"unknown fields {sorted(set(body) - allowed)}")
        blocks = body.get("personalizations")
        _expect(isinstance(blocks, list) and 1 <= len(blocks) <= 1000, "personalizations")
        everyone: list[str] = []
        for block in cast(list[dict[str, Any]], blocks):  # a list: checked just above
            _expect(isinstance(block.get("to"), list) and block["to"], "a personalization needs to")
            people = [p for k in ("to", "cc", "bcc") for p in block.get(k, [])]
            emails = [p["email"].lower() for p in people]
            # Mail Send limitation: to, cc and bcc names "cannot include commas or semicolons"
            # (the real API takes the request, then drops the mail as an invalid address).
            for name in (str(p.get("name", "")) for p in people):
                quoted = len(name) >= 2 and name[0] == name[-1] == '"'
                _expect(quoted or not set(name) & {",", ";"}, f"recipient name {name!r}")
            _expect(len(emails) == len(set(emails)), "an address twice in one personalization")
            for e in emails:
                _sendgrid_email(e, f"personalizations: {e!r}")
            everyone += emails
            # "The subject is required. You can get around this requirement if you use a
            # template with a subject defined or if every personalization has a subject
            # defined." Subjects are strings of at least one character (minLength 1).
            subject = block.get("subject", body.get("subject"))
            _expect(subject is not None, "The subject is required")
            _expect(isinstance(subject, str) and len(subject) >= 1, "subject minLength 1")
        # "There is a limit of 1000 total recipients (to + cc + bcc) per request", and
        # "Each unique email address in the personalizations array should only be included once".
        _expect(len(everyone) <= 1000, f"{len(everyone)} recipients in one request")
        _expect(len(everyone) == len(set(everyone)), "an address twice in personalizations")
        _sendgrid_email(body.get("from", {}).get("email", ""), "from.email", longest=320)
        reply_to = [body["reply_to"]] if "reply_to" in body else body.get("reply_to_list", [])
        _expect(not ("reply_to" in body and "reply_to_list" in body), "reply_to and reply_to_list")
        for person in reply_to:
            _sendgrid_email(person.get("email", ""), "reply_to.email", longest=320)
        content = body.get("content") or []
        _expect(bool(content), "no content")
        _expect(all(c.get("value") for c in content), "empty content value")
        types = [c["type"] for c in content]
        _expect(all(t and not SENDGRID_FORBIDDEN & set(t) for t in types), "content type")
        if "text/plain" in types:
            _expect(types.index("text/plain") == 0, "text/plain must come first")
        for a in body.get("attachments", []):
            _expect(bool(a.get("filename")), "attachment without filename")
            # "The attachment content must be a string at least one character in length."
            _expect(bool(a.get("content")), f"attachment {a['filename']!r} without content")
            base64.b64decode(a["content"], validate=True)
            _expect(a.get("disposition", "attachment") in ("attachment", "inline"), "disposition")
            if a.get("disposition") == "inline":
                _expect(bool(a.get("content_id")), "inline attachment without content_id")
            for key in ("filename", "content_id", "type"):
                value = str(a.get(key, ""))
                _expect(not SENDGRID_FORBIDDEN & set(value), f"attachment {key} {value!r}")
            _expect("type" not in a or bool(a["type"]), "empty attachment type")
        seen: set[str] = set()
        for name, value in (body.get("headers") or {}).items():
            _expect(name.lower() not in SENDGRID_RESERVED, f"reserved header {name}")
            _expect(isinstance(value, str), f"header {name} is not a string")
            # "Header keys cannot contain non-ASCII characters and empty spaces."
            _expect(name.isascii() and name.isprintable() and " " not in name, f"key {name!r}")
            _expect(name.lower() not in seen, f"duplicate header key {name}")
            seen.add(name.lower())

    async def get_scopes(self, request: Request) -> Response:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        self.record(request, {"path": request.url.path})
        return JSONResponse({"scopes": self.scopes})


def main() -> None:
    parser = argparse.ArgumentParser(description="serve one provider fake on 127.0.0.1")
    parser.add_argument("api", choices=["mailgun", "sendgrid"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    fake: FakeApi = MailgunFake() if args.api == "mailgun" else SendgridFake()
    # Serving alone (benchmarks): keep nothing per request, so memory stays flat.
    fake.requests = _Discard()
    if isinstance(fake, MailgunFake):
        fake.messages = _Discard()

    async def serve() -> None:
        await fake.start(args.port)
        print(f"{fake.name} fake on {fake.base_url}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve())


class _Discard(list[Any]):
    """A list that keeps nothing (a long benchmark run must not grow the fake's memory)."""

    def append(self, item: Any) -> None:
        pass


if __name__ == "__main__":
    main()

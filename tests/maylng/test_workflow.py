"""The reference's quick-start examples against a running relayd over real HTTP.

The curl workflow, the Python client and the JavaScript client are the
reference's own code with only the base URL and key changed (the Python client
imports httpx under the name ``requests``: the project does not depend on
requests, and the calls it makes are the same in httpx).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from daemon.server import Server
from daemon.store.accounts import email_addresses

PYTHON_CLIENT = """
import requests
import json

class MaylngAPI:
    def __init__(self, api_key):
        self.api_key = api_key
        self.base_url = 'https://api.mayl.ng:8080/v1'
        self.headers = {
            'Content-Type': 'application/json',
            'Authorization': f'Bearer {api_key}'
        }

    def create_email_address(self, address_type='temporary', prefix=None):
        data = {'type': address_type}
        if prefix:
            data['prefix'] = prefix

        response = requests.post(
            f'{self.base_url}/email-addresses',
            headers=self.headers,
            json=data
        )
        return response.json()

    def send_email(self, from_email_id, to_recipients, subject, html_content, text_content=None):
        data = {
            'from_email_id': from_email_id,
            'to_recipients': to_recipients,
            'subject': subject,
            'html_content': html_content
        }
        if text_content:
            data['text_content'] = text_content

        response = requests.post(
            f'{self.base_url}/emails/send',
            headers=self.headers,
            json=data
        )
        return response.json()

    def get_email_status(self, email_id):
        response = requests.get(
            f'{self.base_url}/emails/{email_id}/status',
            headers=self.headers
        )
        return response.json()

# Usage
api = MaylngAPI('your_api_key_here')

# Create email address
email_address = api.create_email_address('temporary', 'python-demo')
print(f"Created email: {email_address['email']}")

# Send email
email = api.send_email(
    email_address['id'],
    ['recipient@example.com'],
    'Hello from Python!',
    '<h1>Hello!</h1><p>This email was sent via the Maylng API from Python.</p>'
)
print(f"Email sent: {email['id']}")

# Check status
status = api.get_email_status(email['id'])
print(f"Email status: {status['status']}")
"""

JS_CLIENT = """
const API_BASE = 'https://api.mayl.ng:8080/v1';

class MaylngAPI {
  constructor(apiKey) {
    this.apiKey = apiKey;
  }

  async request(method, endpoint, data = null) {
    const options = {
      method,
      headers: {
        'Content-Type': 'application/json',
        'Authorization': `Bearer ${this.apiKey}`
      }
    };

    if (data) {
      options.body = JSON.stringify(data);
    }

    const response = await fetch(`${API_BASE}${endpoint}`, options);
    return response.json();
  }

  // Create email address
  async createEmailAddress(type = 'temporary', prefix = null) {
    return this.request('POST', '/email-addresses', {
      type,
      prefix
    });
  }

  // Send email
  async sendEmail(fromEmailId, toRecipients, subject, htmlContent, textContent = null) {
    return this.request('POST', '/emails/send', {
      from_email_id: fromEmailId,
      to_recipients: toRecipients,
      subject,
      html_content: htmlContent,
      text_content: textContent
    });
  }

  // Get email status
  async getEmailStatus(emailId) {
    return this.request('GET', `/emails/${emailId}/status`);
  }
}

// Usage
const api = new MaylngAPI('your_api_key_here');

async function example() {
  // Create email address
  const emailAddress = await api.createEmailAddress('temporary', 'my-prefix');
  console.log('Created email:', emailAddress.email);

  // Send email
  const email = await api.sendEmail(
    emailAddress.id,
    ['recipient@example.com'],
    'Hello from JavaScript!',
    '<h1>Hello!</h1><p>This email was sent via the Maylng API.</p>'
  );
  console.log('Email sent:', email.id);

  // Check status
  const status = await api.getEmailStatus(email.id);
  console.log('Email status:', status.status);

  // Not in the reference: an address with the default prefix (null: generate one).
  const generated = await api.createEmailAddress();
  console.log('Generated email:', generated.email);
}

example().catch(console.error);
"""


def _adapt(code: str, base_url: str, key: str) -> str:
    return code.replace("https://api.mayl.ng:8080", base_url).replace("your_api_key_here", key)


async def _create_account(http: httpx.AsyncClient) -> str:
    response = await http.post("/v1/accounts", json={"plan": "free"})
    assert response.status_code == 201
    return str(response.json()["api_key"])


async def _wait_status(http: httpx.AsyncClient, auth: dict[str, str], email_id: str) -> Any:
    for _ in range(100):
        status = (await http.get(f"/v1/emails/{email_id}/status", headers=auth)).json()
        if status["status"] not in ("queued", "scheduled"):
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"email {email_id} still {status}")


async def test_complete_workflow_example(relay: Any) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        # 1. Create account
        account = await http.post(
            "/v1/accounts", headers={"Content-Type": "application/json"}, content='{"plan": "free"}'
        )
        api_key = account.json()["api_key"]
        auth = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        # 2. Create email address
        address = await http.post(
            "/v1/email-addresses",
            headers=auth,
            content='{"type": "temporary", "prefix": "demo"}',
        )
        email_id = address.json()["id"]
        assert address.json()["email"] == "demo@example.com"
        # 3. Send email
        sent = await http.post(
            "/v1/emails/send",
            headers=auth,
            content=(
                f'{{"from_email_id": "{email_id}", "to_recipients": ["test@example.com"], '
                '"subject": "Hello from Maylng!", "html_content": '
                '"<h1>Welcome!</h1><p>This is a test email from the Maylng API.</p>"}'
            ),
        )
        assert sent.status_code == 201
        send_id = sent.json()["id"]
        # 4. Check email status
        status = await _wait_status(http, auth, send_id)
    assert status["status"] == "sent"
    assert status["id"] == send_id
    assert status["failure_reason"] is None
    assert status["sent_at"] is not None
    outbox = list((relay.config.data_path / "outbox").glob("*.eml"))
    assert len(outbox) == 1
    delivered = outbox[0].read_bytes()
    assert b"From: demo@example.com" in delivered
    assert b"Subject: Hello from Maylng!" in delivered
    assert status["provider_message_id"] == outbox[0].name


async def test_the_reference_python_client(relay: Any) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        key = await _create_account(http)
        code = _adapt(PYTHON_CLIENT, relay.base_url, key).replace(
            "import requests", "import httpx as requests"
        )
        printed: list[str] = []
        await asyncio.to_thread(
            exec, code, {"print": lambda *args: printed.append(" ".join(map(str, args)))}
        )
        assert printed[0] == "Created email: python-demo@example.com"
        assert printed[1].startswith("Email sent: ")
        assert printed[2] in ("Email status: queued", "Email status: sent")
        email_id = printed[1].removeprefix("Email sent: ")
        status = await _wait_status(http, {"Authorization": f"Bearer {key}"}, email_id)
        assert status["status"] == "sent"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
async def test_the_reference_javascript_client(relay: Any, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        key = await _create_account(http)
        script = tmp_path / "maylng.mjs"
        script.write_text(_adapt(JS_CLIENT, relay.base_url, key))
        node = await asyncio.create_subprocess_exec(
            "node", str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(node.communicate(), 30)
        assert node.returncode == 0 and err == b"", err.decode()
        lines = out.decode().splitlines()
        assert lines[0] == "Created email: my-prefix@example.com"
        assert lines[1].startswith("Email sent: ")
        assert lines[2] in ("Email status: queued", "Email status: sent")
        assert lines[3].startswith("Generated email: ") and lines[3].endswith("@example.com")
        email_id = lines[1].removeprefix("Email sent: ")
        status = await _wait_status(http, {"Authorization": f"Bearer {key}"}, email_id)
        assert status["status"] == "sent"


@pytest.fixture
async def fast_expiry(make_config: Callable[..., Any], sqlite_url: str) -> AsyncIterator[Server]:
    """A running relayd whose address-expiry job runs every second."""
    server = Server(make_config(sqlite_url, accounts={"expiry_interval": "1s"}))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_the_scheduler_expires_temporary_addresses(fast_expiry: Server) -> None:
    service = fast_expiry.service
    async with httpx.AsyncClient(base_url=fast_expiry.base_url) as http:
        auth = {"Authorization": f"Bearer {await _create_account(http)}"}
        # Active when checked just below, however slow the request; expired by the job soon.
        at = (service.clock() + timedelta(seconds=4)).isoformat()
        created = await http.post(
            "/v1/email-addresses", headers=auth, json={"type": "temporary", "expires_at": at}
        )
        address_id = created.json()["id"]

        def stored_status() -> str:
            with service.engine.connect() as conn:
                return str(
                    conn.execute(
                        sa.select(email_addresses.c.status).where(
                            email_addresses.c.id == address_id
                        )
                    ).scalar()
                )

        assert stored_status() == "active"
        deadline = time.monotonic() + 20  # due in 4s, the job runs every second
        while stored_status() != "expired" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert stored_status() == "expired"
    # A new connection: the first one sat idle about as long as relayd's (uvicorn's) 5s
    # keep-alive, and a request sent as the server closes it fails with a ReadError.
    async with httpx.AsyncClient(base_url=fast_expiry.base_url) as http:
        sent = await http.post(
            "/v1/emails/send",
            headers=auth,
            json={
                "from_email_id": address_id,
                "to_recipients": ["a@example.org"],
                "subject": "late",
                "text_content": "too late",
            },
        )
        assert sent.status_code == 404
        assert sent.json() == {"error": "from email address not found or not active"}

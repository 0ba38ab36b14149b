"""The completion callback: a POST of the final job record to the job's `callback_url`, signed
the Standard Webhooks way, so a receiver verifies it with the `standardwebhooks` library (or
any of its ports) and rejects replays by the timestamp.

  Content-Type: application/json          body: the JobRecord as JSON
  webhook-id: msg_<hex>                   the same on every retry (the receiver's idempotency key)
  webhook-timestamp: <unix seconds>       of this attempt
  webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">
  X-Runner-Event: job.finished            X-Runner-Delivery: the webhook-id
  X-Runner-Signature-256: sha256=<hex HMAC-SHA256 of the body, key: the secret's UTF-8 bytes>
                                          (the older scheme, kept for receivers written for it)

The key (callbacks.secret) is `whsec_<base64>`, Standard Webhooks' own form (the key is the
decoded bytes), or any other string (its UTF-8 bytes: `standardwebhooks.Webhook(secret.encode())`).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
from urllib.parse import unquote, urlsplit

from runner.config.sections import CallbacksConfig
from runner.sources.git import mask_url
from runner.worker.notify.addresses import AddressRule, host_names, is_exact, literal_address, rule_for
from runner.worker.notify.http import Outgoing

LEGACY_SIGNATURE_HEADER = "X-Runner-Signature-256"
SECRET_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    """The HMAC key a callbacks.secret stands for. Raises ValueError for a malformed whsec_ secret."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("callbacks.secret starts with whsec_ but what follows is not base64") from None
    if not key:
        raise ValueError("callbacks.secret is whsec_ with no key after it")
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature value: v1,<base64 HMAC-SHA256 of id.timestamp.body>."""
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def legacy_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_callback_url(url: str, cfg: CallbacksConfig) -> str | None:
    """Why `url` may not be called back, or None if it may. A host written as an address (or
    localhost) is checked against the address rules here; a name is checked on the addresses
    it resolves to when the worker connects (runner/worker/notify/http.py)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"callback_url {mask_url(url)!r} is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"callback_url {mask_url(url)!r} must be an http:// or https:// URL"
    if cfg.allowed_hosts is not None:
        names = host_names(parts.hostname, port)
        if not any(name == pattern.lower() if is_exact(pattern) else fnmatch.fnmatchcase(name, pattern)
                   for name in names for pattern in cfg.allowed_hosts):
            return (f"callback host {parts.hostname!r} is not allowed "
                    f"(callbacks.allowed_hosts: {', '.join(cfg.allowed_hosts) or 'none'})")
    rule = address_rule(url, cfg)
    address = literal_address(parts.hostname)
    why = rule.refusal(address) if rule is not None and address is not None else None
    if why:
        return (f"callback host {parts.hostname!r} may not be called back: {why} (allow it with "
                "callbacks.allowed_networks or by naming the host in callbacks.allowed_hosts)")
    return None


def address_rule(url: str, cfg: CallbacksConfig) -> AddressRule | None:
    """Where a callback to `url` may connect (None: anywhere, its host is named in allowed_hosts)."""
    parts = urlsplit(url)
    return rule_for(parts.hostname or "", parts.port, cfg.allowed_hosts, cfg.allowed_networks)


def callback_request(url: str, body: bytes, webhook_id: str, secret: str | None, timestamp: int) -> Outgoing:
    """The signed POST (unsigned when no secret is configured). A URL's user:password@ is sent
    as HTTP Basic authentication."""
    headers = {"Content-Type": "application/json", "X-Runner-Event": "job.finished", "X-Runner-Delivery": webhook_id,
               "webhook-id": webhook_id, "webhook-timestamp": str(timestamp)}
    parts = urlsplit(url)
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    if secret:
        headers["webhook-signature"] = sign(signing_key(secret), webhook_id, timestamp, body)
        headers[LEGACY_SIGNATURE_HEADER] = legacy_signature(secret, body)
    return Outgoing("POST", url, mask_url(url), headers, body)

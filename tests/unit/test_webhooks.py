"""The pieces of crdt_sync/webhooks.py without I/O: ``--webhook`` parsing, endpoint ids,
secrets, signatures (checked against the ``standardwebhooks`` library), the body, the
backoff, and the settings that carry them."""

from __future__ import annotations

import base64
import json
import time
from types import SimpleNamespace

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from crdt_sync.settings import Settings, SettingsError, from_sources
from crdt_sync.webhooks import (
    WebhookConfigError,
    WebhookSender,
    body_of,
    endpoints_of,
    keys_of,
    parse_endpoint,
    sign,
)
from persistence.outbox import Delivery
from persistence.store import Frame

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"z" * 24).decode()


def test_endpoints_parse_urls_and_type_filters() -> None:
    plain = parse_endpoint("https://app.example/hook?token=abc")
    assert plain.types == frozenset() and plain.url == "https://app.example/hook?token=abc"
    assert plain.label == "https://app.example/hook"  # no query in logs
    typed = parse_endpoint("card+column=http://127.0.0.1:9000/hook")
    assert typed.types == {"card", "column"} and typed.url == "http://127.0.0.1:9000/hook"
    # Stable ids: the same flags name the same cursor; another filter is another endpoint.
    assert typed.id == parse_endpoint("column+card=http://127.0.0.1:9000/hook").id
    assert typed.id != parse_endpoint("http://127.0.0.1:9000/hook").id
    assert typed.id.startswith("wh_") and len(typed.id) == 15
    assert typed.spec.wants("card") and not typed.spec.wants("tag")


@pytest.mark.parametrize(
    "raw",
    [
        "ftp://x/h",
        "http://",
        "card=",
        "card/x=http://h/",
        "=http://h/",
        "not a url",
        "http://h:99999/",
    ],
)
def test_bad_endpoints_are_refused(raw: str) -> None:
    with pytest.raises(WebhookConfigError):
        parse_endpoint(raw)


def test_the_same_endpoint_twice_is_refused() -> None:
    with pytest.raises(WebhookConfigError, match="twice"):
        endpoints_of(["http://h/a", "http://h/a"])


def test_secrets_must_be_whsec_base64() -> None:
    assert keys_of([SECRET]) == [b"k" * 32]
    for bad in ("k" * 40, "whsec_%%%%", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(WebhookConfigError) as info:
            keys_of([bad])
        assert bad not in str(info.value)


def test_signatures_verify_with_standardwebhooks_for_each_secret() -> None:
    body = b'{"type":"frames"}'
    header = sign(keys_of([SECRET, OTHER]), "wh_1:default:1-2", 1_764_700_000, body)
    assert header.count("v1,") == 2
    now = int(time.time())
    headers = {
        "webhook-id": "wh_1:default:1-2",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(keys_of([SECRET, OTHER]), "wh_1:default:1-2", now, body),
    }
    Webhook(SECRET).verify(body, headers)
    Webhook(OTHER).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)


def test_the_body_holds_the_frames_as_the_feed_sends_them() -> None:
    frame = Frame(
        7, "acme", "card", "1", "u", {"a": 1}, "ann", 5, {"client_tx_id": "c", "tx": "t1"}
    )
    d = Delivery(3, "wh_x", "acme", 7, 9, 0, 0, [frame])
    assert d.webhook_id == "wh_x:acme:7-9"
    body = json.loads(body_of(d))
    assert body == {
        "type": "frames",
        "org": "acme",
        "first_sid": 7,
        "last_sid": 9,
        "frames": [
            {
                "sid": 7,
                "t": "card",
                "id": "1",
                "op": "u",
                "p": {"a": 1},
                "who": "ann",
                "at": 5,
                "ctx": {"client_tx_id": "c"},
                "tx": "t1",
            }
        ],
    }


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    settings = Settings(
        webhook=("http://h/",),
        webhook_secret=(SECRET,),
        webhook_backoff_seconds=1.0,
        webhook_backoff_max_seconds=8.0,
    )
    sender = WebhookSender(settings, SimpleNamespace(), "n")  # type: ignore[arg-type]
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0), (500, 8.0)):
        for _ in range(20):
            assert ceiling / 2 <= sender.backoff_seconds(attempt) <= ceiling


def test_settings_take_webhooks_from_flags_and_env() -> None:
    s = from_sources(
        {"webhook": [("card=http://h/a",), ("http://h/b",)]},
        {"CRDT_SYNC_WEBHOOK_SECRET": f"{SECRET},{OTHER}"},
    )
    assert s.webhook == ("card=http://h/a", "http://h/b")
    assert s.webhook_secret == (SECRET, OTHER)
    assert SECRET not in repr(s) and "http://h/a" not in repr(s)
    with pytest.raises(SettingsError, match="needs --webhook-secret"):
        Settings(webhook=("http://h/",))
    with pytest.raises(SettingsError, match="whsec_"):
        Settings(webhook=("http://h/",), webhook_secret=("nope",))

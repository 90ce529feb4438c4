"""Runtime kit pieces that need no services."""
import json
import logging

import pytest

from common.logging import JsonFormatter, log_context, redact
from common.service import warn_if_plaintext

pytestmark = pytest.mark.unit


def test_plaintext_warning_only_beyond_loopback(caplog):
    with caplog.at_level(logging.WARNING, logger="corral.service"):
        assert warn_if_plaintext("api", "127.0.0.1") is False
        assert warn_if_plaintext("api", "::1") is False
        assert warn_if_plaintext("api", "0.0.0.0") is True
        assert warn_if_plaintext("api", "10.0.0.5", tls=True) is False
    assert len(caplog.records) == 1 and "plaintext" in caplog.records[0].getMessage()


def test_json_lines_carry_context_and_redact_credentials():
    rec = logging.LogRecord("corral.x", logging.INFO, __file__, 1,
                            "connecting to postgresql://user:secret@db:5432/x", None, None)
    with log_context(op_id="op_1", sandbox_id="sb", host_id="h"):
        doc = json.loads(JsonFormatter().format(rec))
    assert doc["op_id"] == "op_1" and doc["sandbox_id"] == "sb" and doc["host_id"] == "h"
    assert "secret" not in doc["msg"] and "***@db" in doc["msg"]
    assert redact("nats://a:b@h:4222") == "nats://***@h:4222"

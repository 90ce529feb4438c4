"""What a usage line owes Stripe: identifiers, values, how answers are treated."""
from decimal import Decimal

import pytest

from corral.fake_stripe import form
from services.billing.domain.stripe_lines import (backoff_s, classify, identifier, lines_for,
                                                  meter_specs, value_text)

pytestmark = pytest.mark.unit
SPECS = meter_specs("corral_vcpu_seconds", "corral_memory_gib_seconds", "corral_storage_gib_hours")
EID = "5b7e4a52-56b5-5d4f-a6c4-0c1f3c3f8f1e"


def test_one_line_per_meter_with_a_value_named_by_event_and_meter():
    row = {"event_id": EID, "org_id": "o", "end_us": 1_700_000_000_900_000,
           "vcpu_seconds": 90.0, "memory_mib_seconds": 256 * 90.0, "storage_mib_seconds": 0.0}
    lines = lines_for(row, SPECS)
    assert [(x.event_name, x.value, x.identifier) for x in lines] == [
        ("corral_vcpu_seconds", "90", f"{EID}:corral_vcpu_seconds"),
        ("corral_memory_gib_seconds", "22.5", f"{EID}:corral_memory_gib_seconds")]
    assert {x.timestamp for x in lines} == {1_700_000_000}  # the period's end, whole seconds
    snap = {**row, "vcpu_seconds": 0.0, "memory_mib_seconds": 0.0,
            "storage_mib_seconds": 1024 * 3600 * 2.5}
    assert [(x.event_name, x.value) for x in lines_for(snap, SPECS)] == [
        ("corral_storage_gib_hours", "2.5")]


def test_values_round_once_to_six_decimals_and_sum_exactly():
    assert value_text(1 / 3, Decimal(1)) == "0.333333"
    assert value_text(0.0000004, Decimal(1)) == "0"
    assert value_text(1e9 + 0.5, Decimal(1)) == "1000000000.5"
    vals = [value_text(x * 0.1, Decimal(1) / 1024) for x in range(1, 50)]
    assert all(len(v.partition(".")[2]) <= 6 for v in vals)
    assert sum(Decimal(v) for v in vals) == sum(Decimal(v) for v in vals[::-1])


def test_identifiers_stay_within_stripes_limit():
    assert len(identifier(EID, "m" * 60)) <= 100
    with pytest.raises(ValueError):
        identifier(EID, "m" * 64)


@pytest.mark.parametrize("status,code,want", [
    (200, None, "sent"), (400, "resource_already_exists", "sent"),
    (None, None, "retry"), (500, None, "retry"), (503, None, "retry"), (429, "rate_limit", "retry"),
    (409, "idempotency_error", "retry"),
    (400, "resource_missing", "park"), (400, "timestamp_too_far_in_past", "park"),
    (404, None, "park"), (401, None, "halt"), (403, None, "halt")])
def test_answers_are_sent_retried_parked_or_halt_everything(status, code, want):
    assert classify(status, code) == want


def test_backoff_doubles_to_its_cap():
    assert [backoff_s(n, 10) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert backoff_s(10_000, 300) == 300


def test_the_fake_reads_stripes_form_encoding():
    assert form("event_name=e&payload[stripe_customer_id]=cus_1&payload[value]=2.5&x=") == {
        "event_name": "e", "payload": {"stripe_customer_id": "cus_1", "value": "2.5"}, "x": ""}


def test_lines_projected_before_the_ledger_get_their_push_rows(tmp_path):
    from services.billing.adapters.usage_index import UsageIndex, items
    ix = UsageIndex("sqlite", str(tmp_path / "u.sqlite"), SPECS)
    ix.create()
    with ix.engine.begin() as conn:  # as an older version left it: a line, no push rows
        conn.execute(items.insert(), [
            {"event_id": EID, "org_id": "o", "sandbox_id": "s", "start_us": 0, "end_us": 10**7,
             "vcpu_seconds": 10.0, "memory_mib_seconds": 2560.0, "snapshot_id": None,
             "storage_mib_seconds": 0.0},
            {"event_id": "zero", "org_id": "o", "sandbox_id": "s", "start_us": 0, "end_us": 1,
             "vcpu_seconds": 0.0, "memory_mib_seconds": 0.0, "snapshot_id": None,
             "storage_mib_seconds": 0.0}])
    assert ix.ledger.for_events([EID]) == {}
    ix.create()  # the next start
    rows = ix.ledger.for_events([EID, "zero"])[EID]
    assert [(r["event_name"], r["value"], r["state"]) for r in rows] == [
        ("corral_memory_gib_seconds", "2.5", "pending"), ("corral_vcpu_seconds", "10", "pending")]
    assert ix.backfill() == 0  # once
    ix.close()

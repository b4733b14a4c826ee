"""Tenant validation and escaping, DLQ headers: the rules that keep tenants apart."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from state.keys import MAX_TENANT_LENGTH, KeySpace, escape_tenant, unescape_tenant, validate_tenant
from worker.stream.records import DLQ_ERROR, DLQ_OFFSET, dlq_headers, tenant_of


@given(st.text(min_size=1, max_size=50))
def test_escaped_tenants_round_trip_and_contain_only_safe_characters(tenant: str) -> None:
    escaped = escape_tenant(tenant)
    assert unescape_tenant(escaped) == tenant
    assert all(ch.isascii() and (ch.isalnum() or ch in "_.-%") for ch in escaped)


@pytest.mark.parametrize("tenant", ["a:b", "a*", "a?b", "[x]", "{tag}", "a b", "t:s:0", "x\\y"])
def test_separators_and_glob_characters_cannot_reach_another_key(tenant: str) -> None:
    keys = KeySpace("p", "topic")
    escaped = escape_tenant(tenant)
    assert not set(escaped) & set(":*?[]{} \\")
    # No escaped tenant can produce another tenant's key prefix.
    assert keys.slot(escaped, 0).count(":") == keys.slot("plain", 0).count(":")


def test_distinct_tenants_never_share_keys() -> None:
    tenants = ["a", "a:", "a%3A", "A", "a.b", "a-b", "a_b"]
    assert len({escape_tenant(t) for t in tenants}) == len(tenants)


@pytest.mark.parametrize(
    ("raw", "valid"),
    [
        (b"acme", True),
        (b"", False),
        (b"x" * MAX_TENANT_LENGTH, True),
        (b"x" * (MAX_TENANT_LENGTH + 1), False),
        (b"\xff\xfe", False),
        (b"tab\there", False),
        (b"..", False),
        ("été".encode(), True),
    ],
)
def test_validate_tenant(raw: bytes, valid: bool) -> None:
    assert (validate_tenant(raw) is not None) is valid


def test_tenant_of_header_default_and_invalid() -> None:
    assert tenant_of([("X-Scope-OrgID", b"acme")], "X-Scope-OrgID", "single") == "acme"
    assert tenant_of([("x-scope-orgid", b"acme")], "X-Scope-OrgID", "single") == "acme"
    assert tenant_of([], "X-Scope-OrgID", "single") == "single"
    assert tenant_of(None, "X-Scope-OrgID", "single") == "single"
    assert tenant_of([("X-Scope-OrgID", b"x" * 500)], "X-Scope-OrgID", "single") is None


def test_dlq_headers_keep_originals_and_say_why() -> None:
    headers = dict(dlq_headers([("X-Scope-OrgID", b"acme")], "bad protobuf", "in", 3, 42))
    assert headers["X-Scope-OrgID"] == b"acme"
    assert headers[DLQ_ERROR] == b"bad protobuf"
    assert headers[DLQ_OFFSET] == b"42"

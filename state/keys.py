"""Redis key layout, in one place so that nothing else builds key strings by hand.

Everything lives under ``<prefix>:``; tenant data under ``<prefix>:t:<escaped tenant>:``:

==============================  ======  ============================================
key                             type    holds
==============================  ======  ============================================
``P:offsets:<topic>``           hash    partition -> next input offset to apply
``P:fence:<topic>``             hash    partition -> fencing token of its owner
``P:batch:<topic>``             hash    partition -> digest of the last merge applied (retry guard)
``P:slots:<topic>``             string  the slot count the state was written with
``P:edges:<topic>:<partition>`` string  pending service-graph half-edges of a partition
``P:tenants``                   set     escaped tenants that have state
``P:t:<T>:r``                   hash    resource id -> msgpack resource attributes
``P:t:<T>:s:<slot>``            hash    16-byte series digest -> msgpack series record
``P:t:<T>:d:<slot>``            list    delta log: flushes' rows for the slot, not yet folded
``P:t:<T>:n``                   string  number of active series (the tenant limit)
==============================  ======  ============================================

Tenant values come from a Kafka header, i.e. from outside: they are validated and escaped
(percent-encoding of everything but ``[A-Za-z0-9_.-]``) so that no value can reach another
tenant's keys, inject a separator, or contain glob characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_TENANT_LENGTH", "KeySpace", "escape_tenant", "unescape_tenant", "validate_tenant"]

#: Mimir's and Tempo's limit for a tenant ID.
MAX_TENANT_LENGTH = 150
_SAFE = re.compile(rb"[A-Za-z0-9_.\-]")


def validate_tenant(raw: bytes) -> str | None:
    """The tenant as text, or None when it is unusable (empty, too long, not UTF-8, control chars)."""
    if not raw or len(raw) > MAX_TENANT_LENGTH:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text) or text in {".", ".."}:
        return None
    return text


def escape_tenant(tenant: str) -> str:
    """Percent-encode every byte outside ``[A-Za-z0-9_.-]``: ``a:b*`` becomes ``a%3Ab%2A``."""
    return "".join(
        chr(byte) if _SAFE.fullmatch(bytes((byte,))) else f"%{byte:02X}" for byte in tenant.encode("utf-8")
    )


def unescape_tenant(escaped: str) -> str:
    raw = bytearray()
    index = 0
    while index < len(escaped):
        if escaped[index] == "%":
            raw.append(int(escaped[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.append(ord(escaped[index]))
            index += 1
    return raw.decode("utf-8")


@dataclass(frozen=True, slots=True)
class KeySpace:
    prefix: str
    topic: str

    @property
    def offsets(self) -> str:
        return f"{self.prefix}:offsets:{self.topic}"

    @property
    def fence(self) -> str:
        return f"{self.prefix}:fence:{self.topic}"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}:tenants"

    def tenant_root(self, escaped_tenant: str) -> str:
        return f"{self.prefix}:t:{escaped_tenant}"

    def resources(self, escaped_tenant: str) -> str:
        return f"{self.prefix}:t:{escaped_tenant}:r"

    def slot(self, escaped_tenant: str, slot: int) -> str:
        return f"{self.prefix}:t:{escaped_tenant}:s:{slot}"

    def log(self, escaped_tenant: str, slot: int) -> str:
        return f"{self.prefix}:t:{escaped_tenant}:d:{slot}"

    def active(self, escaped_tenant: str) -> str:
        return f"{self.prefix}:t:{escaped_tenant}:n"

    def pending_edges(self, partition: int) -> str:
        return f"{self.prefix}:edges:{self.topic}:{partition}"

"""The Redis key layout (everything under ``<prefix>:``), and tenant validation and escaping:
no tenant value can reach another tenant's keys, inject a separator or hold glob characters."""

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
        """hash: partition -> next input offset to apply."""
        return f"{self.prefix}:offsets:{self.topic}"

    @property
    def applied(self) -> str:
        """hash: partition -> ``<token>:<sequence>`` of the last merge applied (merge.lua)."""
        return f"{self.prefix}:applied:{self.topic}"

    @property
    def fence(self) -> str:
        """hash: partition -> fencing token of its owner."""
        return f"{self.prefix}:fence:{self.topic}"

    @property
    def generation(self) -> str:
        """string: a random id made when the state was created; missing or changed: state was lost."""
        return f"{self.prefix}:gen:{self.topic}"

    @property
    def tenants(self) -> str:
        """set: escaped tenants that have state."""
        return f"{self.prefix}:tenants"

    def tenant_root(self, escaped_tenant: str) -> str:
        return f"{self.prefix}:t:{escaped_tenant}"

    def resources(self, escaped_tenant: str) -> str:
        """hash: resource id -> msgpack resource attributes."""
        return f"{self.prefix}:t:{escaped_tenant}:r"

    def resource_seen(self, escaped_tenant: str) -> str:
        """hash: resource id -> when a span of it was last seen (µs), raised by merges."""
        return f"{self.prefix}:t:{escaped_tenant}:seen"

    def slot(self, escaped_tenant: str, slot: int) -> str:
        """hash: 16-byte series digest -> msgpack series record."""
        return f"{self.prefix}:t:{escaped_tenant}:s:{slot}"

    def parts(self, escaped_tenant: str, slot: int) -> str:
        """hash: id -> an attribute part (OTLP-encoded KeyValue) that metas of the slot's records
        refer to (state.codec.PartInterner); only added to, by the slot's folds."""
        return f"{self.prefix}:t:{escaped_tenant}:p:{slot}"

    def log(self, escaped_tenant: str, slot: int) -> str:
        """list: the slot's delta log, flushes' rows not yet folded."""
        return f"{self.prefix}:t:{escaped_tenant}:d:{slot}"

    def version(self, escaped_tenant: str, slot: int) -> str:
        """string: the slot's version, bumped by every committed fold (absent: 0)."""
        return f"{self.prefix}:t:{escaped_tenant}:v:{slot}"

    def active(self, escaped_tenant: str) -> str:
        """string: the tenant's active series (its limit)."""
        return f"{self.prefix}:t:{escaped_tenant}:n"

    def pending_edges(self, partition: int) -> str:
        """string: the partition's pending service-graph half-edges."""
        return f"{self.prefix}:edges:{self.topic}:{partition}"

"""The load generator's traffic model: a shop-like microservice system emitting realistic OTLP traces.

A ``seed`` always gives the same topology and, with the same generator seed, the same bytes.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from worker.model.errors import ConfigError

__all__ = [
    "MAX_SERVICES",
    "MIN_SERVICES",
    "NAMED_SERVICES",
    "Call",
    "DatabaseCall",
    "ExternalCall",
    "Instance",
    "InternalCall",
    "Latency",
    "Operation",
    "PublishCall",
    "RemoteCall",
    "Service",
    "TraceGenerator",
    "TrafficModel",
    "build_model",
]

MIN_SERVICES: Final = 2
MAX_SERVICES: Final = 50

Protocol: TypeAlias = Literal["http", "grpc", "messaging"]
DatabaseSystem: TypeAlias = Literal["postgresql", "redis"]


# --------------------------------------------------------------------------------------------
# The model: plain frozen data, so it can be compared, printed and shared between generators.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Latency:
    """A log-normal duration with rare outliers.

    Measured service latencies are right-skewed: most requests cluster around the median and a
    long tail reaches several times that. ``sigma`` is the shape (0.3 tight, 1.0 very spread).
    With probability ``outlier_rate`` a sample is additionally multiplied by 5-30x, which turns
    a slow endpoint (hundreds of ms) into the occasional multi-second request seen in practice.
    """

    median_ms: float
    sigma: float = 0.5
    outlier_rate: float = 0.002


@dataclass(frozen=True, slots=True)
class RemoteCall:
    """A synchronous HTTP or gRPC call to ``operation`` of another service of the model.

    Yields a CLIENT span in the caller and a SERVER span in the callee. ``max_repeat`` > 1 models
    loops over items (one call per cart item), a common shape in real traces.
    """

    service: str
    operation: str
    probability: float = 1.0
    max_repeat: int = 1


@dataclass(frozen=True, slots=True)
class DatabaseCall:
    """A CLIENT span to PostgreSQL or Redis; the service graph shows it as a database edge."""

    system: DatabaseSystem
    namespace: str
    operation: str
    collection: str
    statement: str
    latency: Latency
    probability: float = 1.0
    max_repeat: int = 1


@dataclass(frozen=True, slots=True)
class ExternalCall:
    """An HTTPS call to a third party outside the mesh (payment provider, mail API).

    It has a CLIENT span with ``peer.service`` but no SERVER span, like every call to a system
    that does not send us its traces.
    """

    peer_service: str
    address: str
    method: str
    path: str
    latency: Latency
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class PublishCall:
    """A Kafka publish: a PRODUCER span here, one CONSUMER span per consuming service.

    Each consumer service has its own consumer group, so one message is processed once per
    consumer; the consumer span's parent is the producer span. ``consumers`` may be empty when
    the consuming services are not part of the model (the message is still produced).
    """

    topic: str
    consumers: tuple[str, ...]
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class InternalCall:
    """In-process work worth its own INTERNAL span (template rendering, scoring, hashing)."""

    name: str
    function: str
    latency: Latency
    probability: float = 1.0


Call: TypeAlias = RemoteCall | DatabaseCall | ExternalCall | PublishCall | InternalCall


@dataclass(frozen=True, slots=True)
class Operation:
    """One endpoint of a service: an HTTP route, a gRPC method or a Kafka topic it consumes.

    ``latency`` is the handler's own time (excluding downstream calls); ``calls`` run in order
    (or all at once when ``parallel``, as a page fanning out to several backends does), each with
    its own probability. ``weight`` is the share of incoming user traffic (entry service only).
    """

    name: str
    protocol: Protocol
    method: str
    target: str
    latency: Latency
    calls: tuple[Call, ...] = ()
    parallel: bool = False
    weight: float = 0.0


@dataclass(frozen=True, slots=True)
class Instance:
    """One pod of a service; each becomes one OTLP ``Resource``."""

    instance_id: str
    pod_name: str


@dataclass(frozen=True, slots=True)
class Service:
    """A deployed service: its operations, its pods and some instrumentation habits.

    ``peer_service``: its client spans carry ``peer.service`` (only some SDK setups add it).
    ``ok_status``: it sets status OK on successful server spans (most leave it UNSET).
    ``legacy_db_semconv``: its database spans use ``db.name``/``db.operation``/``db.statement``
    instead of ``db.namespace``/``db.operation.name``/``db.query.text``.
    """

    name: str
    version: str
    language: str
    port: int
    operations: tuple[Operation, ...]
    instances: tuple[Instance, ...]
    peer_service: bool = False
    ok_status: bool = False
    legacy_db_semconv: bool = False

    def operation(self, name: str) -> Operation:
        """Return the operation called ``name``."""
        for op in self.operations:
            if op.name == name:
                return op
        raise KeyError(f"service {self.name!r} has no operation {name!r}")


@dataclass(frozen=True)
class TrafficModel:
    """Topology plus distributions; built deterministically from ``services`` and ``seed``.

    ``error_rate`` is the target fraction of spans with status ERROR (own failures plus
    propagation). The topology (``topology``, ``entry``) is derived in ``__post_init__`` and
    excluded from comparison, since it is a pure function of the other fields.
    """

    services: int = 6
    error_rate: float = 0.02
    seed: int = 1
    environment: str = "production"
    topology: tuple[Service, ...] = field(init=False, repr=False, compare=False)
    entry: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.services, bool) or not isinstance(self.services, int):
            raise ConfigError(f"services must be an integer, got {self.services!r}")
        if not MIN_SERVICES <= self.services <= MAX_SERVICES:
            raise ConfigError(
                f"services must be between {MIN_SERVICES} and {MAX_SERVICES}, got {self.services}"
            )
        if not 0.0 <= self.error_rate <= 0.5:
            raise ConfigError(f"error_rate must be between 0 and 0.5, got {self.error_rate}")
        topology = _build_topology(self.services, random.Random(self.seed))
        _analyse(topology, _ENTRY)  # raises on cycles or dangling references
        object.__setattr__(self, "topology", topology)
        object.__setattr__(self, "entry", _ENTRY)

    @property
    def service_names(self) -> tuple[str, ...]:
        """The names of all services, entry first."""
        return tuple(s.name for s in self.topology)

    def service(self, name: str) -> Service:
        """Return the service called ``name``."""
        for svc in self.topology:
            if svc.name == name:
                return svc
        raise KeyError(f"no service {name!r} in the model")

    def edges(self) -> frozenset[tuple[str, str]]:
        """Service-to-service edges (caller, callee): remote calls and queue hops."""
        out: set[tuple[str, str]] = set()
        for svc in self.topology:
            for op in svc.operations:
                for call in op.calls:
                    if isinstance(call, RemoteCall):
                        out.add((svc.name, call.service))
                    elif isinstance(call, PublishCall):
                        out.update((svc.name, consumer) for consumer in call.consumers)
        return frozenset(out)

    def expected_spans_per_trace(self) -> float:
        """Mean number of spans per trace implied by the call probabilities."""
        visits = _analyse(self.topology, self.entry)
        total = 0.0
        for svc in self.topology:
            for op in svc.operations:
                per_visit = 1.0
                for call in op.calls:
                    n = call.probability * (1 + getattr(call, "max_repeat", 1)) / 2
                    per_visit += n  # the caller-side span; callee spans count at the callee
                total += visits[(svc.name, op.name)] * per_visit
        return total


def build_model(services: int = 6, error_rate: float = 0.02, seed: int = 1) -> TrafficModel:
    """Return the traffic model with ``services`` services (2..50); same seed, same model."""
    return TrafficModel(services=services, error_rate=error_rate, seed=seed)


# --------------------------------------------------------------------------------------------
# The named topology.
# --------------------------------------------------------------------------------------------

_ENTRY: Final = "frontend"
_NETWORK = Latency(0.4, 0.5, 0.001)  # one request/response over the cluster network, both ways
_QUEUE_LAG = Latency(15.0, 1.0, 0.005)  # produce -> consume; consumer lag spikes now and then
_PUBLISH = Latency(1.5, 0.6)
_PG_DB = "shop"
_REDIS_DB = "0"


def _lat(median_ms: float, sigma: float = 0.5) -> Latency:
    return Latency(median_ms, sigma)


def _http(
    method: str,
    route: str,
    median_ms: float,
    calls: Sequence[Call] = (),
    *,
    sigma: float = 0.5,
    parallel: bool = False,
    weight: float = 0.0,
) -> Operation:
    return Operation(
        f"{method} {route}", "http", method, route, _lat(median_ms, sigma), tuple(calls), parallel, weight
    )


def _grpc(
    rpc_service: str, method: str, median_ms: float, calls: Sequence[Call] = (), *, sigma: float = 0.5
) -> Operation:
    return Operation(
        f"{rpc_service}/{method}", "grpc", method, rpc_service, _lat(median_ms, sigma), tuple(calls)
    )


def _consume(topic: str, median_ms: float, calls: Sequence[Call] = ()) -> Operation:
    return Operation(f"process {topic}", "messaging", "process", topic, _lat(median_ms), tuple(calls))


def _pg(
    op: str, table: str, median_ms: float, p: float = 1.0, *, sigma: float = 0.6, repeat: int = 1
) -> DatabaseCall:
    statements = {
        "SELECT": f"SELECT * FROM {table} WHERE id = $1",
        "INSERT": f"INSERT INTO {table} VALUES ($1, $2, $3)",
        "UPDATE": f"UPDATE {table} SET updated_at = now() WHERE id = $1",
        "DELETE": f"DELETE FROM {table} WHERE id = $1",
    }
    return DatabaseCall("postgresql", _PG_DB, op, table, statements[op], _lat(median_ms, sigma), p, repeat)


def _redis(cmd: str, key: str, p: float = 1.0, *, median_ms: float = 0.8, repeat: int = 1) -> DatabaseCall:
    return DatabaseCall("redis", _REDIS_DB, cmd, key, f"{cmd} {key}:?", _lat(median_ms, 0.5), p, repeat)


def _rpc(service: str, rpc_service: str, method: str, p: float = 1.0, repeat: int = 1) -> RemoteCall:
    return RemoteCall(service, f"{rpc_service}/{method}", p, repeat)


def _rest(service: str, method: str, route: str, p: float = 1.0) -> RemoteCall:
    return RemoteCall(service, f"{method} {route}", p)


def _internal(name: str, function: str, median_ms: float, p: float = 1.0, sigma: float = 0.4) -> InternalCall:
    return InternalCall(name, function, _lat(median_ms, sigma), p)


_SESSION = _redis("GET", "session", 0.95)
_PAY, _INV, _CART, _CAT = (
    "oteldemo.PaymentService",
    "inventory.InventoryService",
    "oteldemo.CartService",
    "oteldemo.ProductCatalogService",
)
_CUR, _REC, _AD = "oteldemo.CurrencyService", "oteldemo.RecommendationService", "oteldemo.AdService"


@dataclass(frozen=True, slots=True)
class _NamedSpec:
    name: str
    language: str
    port: int
    replicas: tuple[int, int]
    operations: tuple[Operation, ...]
    peer_service: bool = False
    ok_status: bool = False
    legacy_db_semconv: bool = False


# Order matters: ``services=N`` keeps the first N, so the first six are the classic
# frontend -> checkout -> (payment, inventory -> postgres, shipping -> kafka -> email) picture.
_NAMED: Final[tuple[_NamedSpec, ...]] = (
    _NamedSpec(
        "frontend",
        "nodejs",
        8080,
        (3, 5),
        (
            _http(
                "GET",
                "/",
                6.0,
                [
                    _SESSION,
                    _rpc("catalog", _CAT, "ListProducts"),
                    _rpc("ad", _AD, "GetAds", 0.8),
                    _rpc("currency", _CUR, "GetSupportedCurrencies", 0.9),
                    _rpc("recommendation", _REC, "ListRecommendations", 0.6),
                    _internal("render page", "renderHome", 8.0),
                ],
                parallel=True,
                weight=20,
            ),
            _http(
                "GET",
                "/api/products/{id}",
                4.0,
                [
                    _SESSION,
                    _rpc("catalog", _CAT, "GetProduct"),
                    _rpc("inventory", _INV, "GetStock", 0.8),
                    _rpc("recommendation", _REC, "ListRecommendations", 0.5),
                    _rpc("currency", _CUR, "Convert", 0.9),
                    _rpc("ad", _AD, "GetAds", 0.4),
                ],
                parallel=True,
                weight=25,
            ),
            _http(
                "GET",
                "/api/cart",
                3.0,
                [
                    _SESSION,
                    _rpc("cart", _CART, "GetCart"),
                    _rpc("catalog", _CAT, "GetProduct", 0.9, repeat=3),
                    _rpc("currency", _CUR, "Convert", 0.8),
                    _rest("shipping", "GET", "/api/quote", 0.5),
                ],
                weight=15,
            ),
            _http(
                "POST",
                "/api/cart",
                3.0,
                [_SESSION, _rpc("inventory", _INV, "GetStock", 0.7), _rpc("cart", _CART, "AddItem")],
                weight=10,
            ),
            _http(
                "POST",
                "/api/checkout",
                8.0,
                [_SESSION, _rest("checkout", "POST", "/api/orders")],
                weight=8,
            ),
            _http(
                "GET",
                "/api/orders/{id}",
                3.0,
                [
                    _SESSION,
                    _rest("checkout", "GET", "/api/orders/{id}"),
                    _rest("shipping", "GET", "/api/shipments/{id}", 0.6),
                ],
                weight=5,
            ),
            _http("GET", "/api/search", 5.0, [_SESSION, _rpc("catalog", _CAT, "SearchProducts")], weight=8),
            _http("POST", "/api/login", 4.0, [_rest("users", "POST", "/api/sessions")], weight=4),
            _http("GET", "/api/account", 3.0, [_SESSION, _rest("users", "GET", "/api/users/me")], weight=4),
            _http(
                "POST", "/api/password-reset", 4.0, [_rest("users", "POST", "/api/password-reset")], weight=1
            ),
        ),
        peer_service=True,
    ),
    _NamedSpec(
        "checkout",
        "go",
        8080,
        (2, 3),
        (
            _http(
                "POST",
                "/api/orders",
                15.0,
                [
                    _rpc("cart", _CART, "GetCart"),
                    _rpc("catalog", _CAT, "GetProduct", 0.95, repeat=4),
                    _rpc("currency", _CUR, "Convert", 0.9, repeat=2),
                    _rpc("inventory", _INV, "ReserveStock"),
                    _rpc("payment", _PAY, "Charge"),
                    _rpc("payment", _PAY, "Refund", 0.02),
                    _rest("shipping", "POST", "/api/shipments"),
                    _pg("INSERT", "orders", 8.0),
                    _pg("INSERT", "order_items", 6.0, repeat=3),
                    PublishCall("orders", ("accounting", "fraud-detection")),
                    _rpc("cart", _CART, "EmptyCart"),
                ],
            ),
            _http("GET", "/api/orders/{id}", 3.0, [_pg("SELECT", "orders", 12.0)]),
        ),
    ),
    _NamedSpec(
        "payment",
        "java",
        50051,
        (2, 3),
        (
            _grpc(
                _PAY,
                "Charge",
                6.0,
                [
                    _internal("validate card", "CardValidator.validate", 1.5),
                    ExternalCall(
                        "stripe", "api.stripe.com", "POST", "/v1/payment_intents", _lat(280.0, 0.45)
                    ),
                    _pg("INSERT", "payments", 9.0),
                ],
            ),
            _grpc(
                _PAY,
                "Refund",
                5.0,
                [ExternalCall("stripe", "api.stripe.com", "POST", "/v1/refunds", _lat(320.0, 0.5))],
            ),
        ),
        ok_status=True,
    ),
    _NamedSpec(
        "inventory",
        "go",
        50051,
        (2, 4),
        (
            _grpc(_INV, "GetStock", 1.0, [_redis("GET", "stock"), _pg("SELECT", "stock", 11.0, 0.3)]),
            _grpc(
                _INV,
                "ReserveStock",
                2.0,
                [
                    _pg("UPDATE", "stock", 14.0, repeat=3),
                    _pg("INSERT", "reservations", 7.0),
                    _redis("DEL", "stock"),
                ],
            ),
        ),
        peer_service=True,
    ),
    _NamedSpec(
        "shipping",
        "python",
        8000,
        (2, 3),
        (
            _http(
                "POST",
                "/api/shipments",
                6.0,
                [
                    _internal("compute route", "shipping.routing.plan", 22.0),
                    _pg("INSERT", "shipments", 9.0),
                    PublishCall("shipments", ("email",)),
                ],
            ),
            _http(
                "GET",
                "/api/quote",
                3.0,
                [_rest("quote", "POST", "/getquote"), _internal("calculate packaging", "shipping.pack", 3.0)],
            ),
            _http("GET", "/api/shipments/{id}", 2.5, [_pg("SELECT", "shipments", 10.0)]),
        ),
        legacy_db_semconv=True,
    ),
    _NamedSpec(
        "email",
        "ruby",
        8080,
        (2, 2),
        (
            _consume(
                "shipments",
                4.0,
                [
                    _internal("render template", "ConfirmationMailer#render", 18.0),
                    ExternalCall("sendgrid", "api.sendgrid.com", "POST", "/v3/mail/send", _lat(300.0, 0.5)),
                ],
            ),
            _http(
                "POST",
                "/api/password-reset",
                3.0,
                [
                    _internal("render template", "ResetMailer#render", 12.0),
                    ExternalCall("sendgrid", "api.sendgrid.com", "POST", "/v3/mail/send", _lat(300.0, 0.5)),
                ],
            ),
        ),
        legacy_db_semconv=True,
    ),
    _NamedSpec(
        "cart",
        "dotnet",
        7070,
        (2, 3),
        (
            _grpc(_CART, "GetCart", 0.8, [_redis("HGETALL", "cart")]),
            _grpc(_CART, "AddItem", 1.0, [_redis("HSET", "cart"), _redis("EXPIRE", "cart")]),
            _grpc(_CART, "EmptyCart", 0.6, [_redis("DEL", "cart")]),
        ),
        ok_status=True,
    ),
    _NamedSpec(
        "catalog",
        "go",
        3550,
        (2, 4),
        (
            _grpc(
                _CAT, "ListProducts", 2.0, [_redis("GET", "products"), _pg("SELECT", "products", 18.0, 0.25)]
            ),
            _grpc(_CAT, "GetProduct", 0.7, [_redis("GET", "product"), _pg("SELECT", "products", 9.0, 0.15)]),
            _grpc(_CAT, "SearchProducts", 4.0, [_pg("SELECT", "products_search", 160.0, sigma=0.8)]),
        ),
    ),
    _NamedSpec(
        "currency",
        "cpp",
        7001,
        (2, 2),
        (
            _grpc(_CUR, "GetSupportedCurrencies", 0.3, sigma=0.4),
            _grpc(_CUR, "Convert", 0.5, sigma=0.4),
        ),
    ),
    _NamedSpec(
        "recommendation",
        "python",
        9001,
        (2, 3),
        (
            _grpc(
                _REC,
                "ListRecommendations",
                4.0,
                [
                    _rpc("catalog", _CAT, "ListProducts"),
                    _internal("rank candidates", "recommend.rank", 25.0, sigma=0.6),
                ],
            ),
        ),
    ),
    _NamedSpec(
        "ad",
        "java",
        9555,
        (2, 2),
        (
            _grpc(
                _AD,
                "GetAds",
                1.5,
                [_redis("GET", "ads", 0.6), _internal("select ads", "AdSelector.pick", 2.5)],
            ),
        ),
        ok_status=True,
    ),
    _NamedSpec(
        "users",
        "go",
        8080,
        (2, 3),
        (
            _http(
                "POST",
                "/api/sessions",
                3.0,
                [
                    _pg("SELECT", "users", 8.0),
                    _internal("bcrypt compare", "auth.CheckPassword", 85.0, sigma=0.15),
                    _redis("SET", "session"),
                ],
            ),
            _http("GET", "/api/users/me", 2.0, [_pg("SELECT", "users", 7.0)]),
            _http(
                "POST",
                "/api/password-reset",
                3.0,
                [_pg("UPDATE", "users", 12.0), _rest("email", "POST", "/api/password-reset")],
            ),
        ),
        peer_service=True,
    ),
    _NamedSpec(
        "accounting",
        "dotnet",
        8080,
        (1, 2),
        (_consume("orders", 3.0, [_pg("INSERT", "ledger_entries", 8.0, repeat=3)]),),
        ok_status=True,
    ),
    _NamedSpec(
        "fraud-detection",
        "java",
        8080,
        (1, 2),
        (
            _consume(
                "orders",
                5.0,
                [
                    _redis("INCR", "velocity"),
                    _internal("score transaction", "FraudScorer.score", 14.0),
                ],
            ),
        ),
    ),
    _NamedSpec(
        "quote",
        "php",
        8090,
        (1, 2),
        (_http("POST", "/getquote", 2.0, [_internal("calculate quote", "App\\Quote::calculate", 1.5)]),),
    ),
)

#: Names of the hand-written services, in the order ``services=N`` takes them.
NAMED_SERVICES: Final[tuple[str, ...]] = tuple(spec.name for spec in _NAMED)

_LANGUAGES: Final = ("go", "java", "python", "nodejs", "dotnet", "ruby", "php", "rust")
_NOUNS: Final = (
    "reviews",
    "coupons",
    "loyalty",
    "wishlist",
    "invoices",
    "tax",
    "addresses",
    "returns",
    "giftcards",
    "ratings",
    "stores",
    "pricing",
    "promotions",
    "subscriptions",
    "audit",
    "media",
    "preferences",
    "warehouses",
    "carriers",
    "refunds",
    "bundles",
    "vendors",
    "tickets",
    "questions",
)
_K8S_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"


def _instances(name: str, count: int, rng: random.Random) -> tuple[Instance, ...]:
    """Pods of one Deployment: same ReplicaSet hash, random 5-char suffix, UUIDv4 instance ids."""
    replicaset = "".join(rng.choice(_K8S_ALPHABET) for _ in range(10))
    out = []
    for _ in range(count):
        suffix = "".join(rng.choice(_K8S_ALPHABET) for _ in range(5))
        instance_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        out.append(Instance(instance_id, f"{name}-{replicaset}-{suffix}"))
    return tuple(out)


def _version(rng: random.Random) -> str:
    return f"{rng.randint(1, 3)}.{rng.randint(0, 14)}.{rng.randint(0, 30)}"


def _filter_calls(calls: Iterable[Call], present: set[str]) -> tuple[Call, ...]:
    """Drop calls to services outside the model; keep publishes (the message is still sent)."""
    out: list[Call] = []
    for call in calls:
        if isinstance(call, RemoteCall):
            if call.service in present:
                out.append(call)
        elif isinstance(call, PublishCall):
            out.append(
                PublishCall(call.topic, tuple(c for c in call.consumers if c in present), call.probability)
            )
        else:
            out.append(call)
    return tuple(out)


def _camel(noun: str) -> str:
    return "".join(part.capitalize() for part in noun.split("-"))


def _generated_operations(index: int, protocol: Protocol, noun: str, rng: random.Random) -> list[Operation]:
    """Two to four endpoints of a generated service with plausible latency and storage use."""
    if protocol == "http":
        candidates = [
            ("GET", f"/api/{noun}"),
            ("GET", f"/api/{noun}/{{id}}"),
            ("POST", f"/api/{noun}"),
            ("PUT", f"/api/{noun}/{{id}}"),
        ]
    else:
        rpc_service = f"svc{index}.{_camel(noun)}Service"
        candidates = [
            (m, rpc_service)
            for m in (f"Get{_camel(noun)}", f"List{_camel(noun)}", f"Update{_camel(noun)}", "Health")
        ]
    chosen = candidates[: rng.randint(2, 4)]
    ops: list[Operation] = []
    for method, target in chosen:
        profile = rng.random()
        median = (
            rng.uniform(0.5, 4.0)
            if profile < 0.5
            else rng.uniform(8.0, 40.0)
            if profile < 0.9
            else rng.uniform(100.0, 350.0)
        )
        calls: list[Call] = []
        if rng.random() < 0.35:
            calls.append(
                _redis(
                    rng.choice(("GET", "HGETALL", "SET")),
                    noun.replace("-", "_"),
                    round(rng.uniform(0.6, 1.0), 2),
                )
            )
        if rng.random() < 0.5:
            op = (
                "SELECT"
                if method.upper() == "GET" or method.startswith(("Get", "List", "Health"))
                else "UPDATE"
            )
            calls.append(
                _pg(op, noun.replace("-", "_"), rng.uniform(5.0, 25.0), round(rng.uniform(0.5, 1.0), 2))
            )
        if rng.random() < 0.3:
            calls.append(_internal(f"process {noun}", f"{noun}.handle", rng.uniform(1.0, 10.0)))
        latency = _lat(median, round(rng.uniform(0.3, 0.8), 2))
        if protocol == "http":
            ops.append(Operation(f"{method} {target}", "http", method, target, latency, tuple(calls)))
        else:
            ops.append(Operation(f"{target}/{method}", "grpc", method, target, latency, tuple(calls)))
    return ops


def _build_topology(count: int, rng: random.Random) -> tuple[Service, ...]:
    """The first ``count`` named services, then generated ``svc-N`` ones wired to earlier ops."""
    named = _NAMED[:count]
    present = {spec.name for spec in named} | {f"svc-{i}" for i in range(len(_NAMED), count)}
    # Mutable drafts while wiring; frozen at the end.
    drafts: list[tuple[_NamedSpec, list[tuple[Operation, list[Call]]]]] = []
    for spec in named:
        ops = [(op, list(_filter_calls(op.calls, present))) for op in spec.operations]
        drafts.append((spec, ops))

    def freeze_draft() -> tuple[Service, ...]:
        return tuple(
            Service(
                name=spec.name,
                version=versions[spec.name],
                language=spec.language,
                port=spec.port,
                operations=tuple(_with_calls(op, calls) for op, calls in ops),
                instances=instances[spec.name],
                peer_service=spec.peer_service,
                ok_status=spec.ok_status,
                legacy_db_semconv=spec.legacy_db_semconv,
            )
            for spec, ops in drafts
        )

    versions: dict[str, str] = {}
    instances: dict[str, tuple[Instance, ...]] = {}
    for spec, _ in drafts:
        versions[spec.name] = _version(rng)
        instances[spec.name] = _instances(spec.name, rng.randint(*spec.replicas), rng)

    if count > len(_NAMED):
        visits = _analyse(freeze_draft(), _ENTRY)
        # Candidate callers: every operation with traffic, weighted by how often it runs, so the
        # generated services hang off busy endpoints and every one of them sees traffic. The
        # entry service is damped, otherwise the storefront would fan out to everything.
        callers: list[tuple[int, int]] = []
        weights: list[float] = []
        for si, (spec, ops) in enumerate(drafts):
            for oi, (op, _) in enumerate(ops):
                v = visits[(spec.name, op.name)]
                if v > 0:
                    callers.append((si, oi))
                    weights.append(v * (0.25 if spec.name == _ENTRY else 1.0))
        for index in range(len(_NAMED), count):
            name = f"svc-{index}"
            protocol: Protocol = "http" if rng.random() < 0.5 else "grpc"
            language = rng.choice(_LANGUAGES)
            noun = rng.choice(_NOUNS)
            spec = _NamedSpec(
                name,
                language,
                8080 if protocol == "http" else 50051,
                (1, 3),
                (),
                peer_service=rng.random() < 0.4,
                ok_status=rng.random() < 0.2,
                legacy_db_semconv=rng.random() < 0.3,
            )
            versions[name] = _version(rng)
            instances[name] = _instances(name, rng.randint(1, 3), rng)
            new_ops = _generated_operations(index, protocol, noun, rng)
            si_new = len(drafts)
            drafts.append((spec, [(op, list(op.calls)) for op in new_ops]))
            for op in new_ops:
                (si, oi) = rng.choices(callers, weights)[0]
                caller_spec, caller_ops = drafts[si]
                p = round(rng.uniform(0.3, 0.9), 2)
                caller_ops[oi][1].append(RemoteCall(name, op.name, p))
                visits[(name, op.name)] = visits[(caller_spec.name, caller_ops[oi][0].name)] * p
            # Only now may the new service become a caller: a service does not call itself.
            for oi_new, op in enumerate(new_ops):
                callers.append((si_new, oi_new))
                weights.append(visits[(name, op.name)])
    return freeze_draft()


def _with_calls(op: Operation, calls: list[Call]) -> Operation:
    return Operation(
        op.name, op.protocol, op.method, op.target, op.latency, tuple(calls), op.parallel, op.weight
    )


def _analyse(services: Sequence[Service], entry: str) -> dict[tuple[str, str], float]:
    """Expected visits per (service, operation) per trace; raises ConfigError on cycles/dangling refs.

    Kahn's algorithm over the operation graph: it both proves the call graph acyclic (a trace must
    end) and propagates visit expectations from the weighted entry operations.
    """
    ops: dict[tuple[str, str], Operation] = {(s.name, o.name): o for s in services for o in s.operations}
    consumer_of: dict[tuple[str, str], tuple[str, str]] = {}
    for s in services:
        for o in s.operations:
            if o.protocol == "messaging":
                consumer_of[(s.name, o.target)] = (s.name, o.name)
    children: dict[tuple[str, str], list[tuple[tuple[str, str], float]]] = {k: [] for k in ops}
    indegree = dict.fromkeys(ops, 0)
    for (sname, oname), op in ops.items():
        for call in op.calls:
            targets: list[tuple[str, str]] = []
            factor = 0.0
            if isinstance(call, RemoteCall):
                targets = [(call.service, call.operation)]
                factor = call.probability * (1 + call.max_repeat) / 2
            elif isinstance(call, PublishCall):
                targets = [
                    consumer_of.get((c, call.topic), (c, f"process {call.topic}")) for c in call.consumers
                ]
                factor = call.probability
            for target in targets:
                if target not in ops:
                    raise ConfigError(f"{sname} {oname!r} calls unknown operation {target}")
                children[(sname, oname)].append((target, factor))
                indegree[target] += 1
    entry_ops = [(k, o.weight) for k, o in ops.items() if k[0] == entry]
    total_weight = sum(w for _, w in entry_ops) or 1.0
    visits = dict.fromkeys(ops, 0.0)
    for k, w in entry_ops:
        visits[k] = w / total_weight
    ready = [k for k, d in indegree.items() if d == 0]
    seen = 0
    while ready:
        node = ready.pop()
        seen += 1
        for child, factor in children[node]:
            visits[child] += visits[node] * factor
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    if seen != len(ops):
        raise ConfigError("the service call graph has a cycle")
    return visits


# --------------------------------------------------------------------------------------------
# The generator: the model compiled into prebuilt protobuf templates and a tight recursion.
# --------------------------------------------------------------------------------------------

_SERVER: Final = Span.SpanKind.SPAN_KIND_SERVER
_CLIENT: Final = Span.SpanKind.SPAN_KIND_CLIENT
_INTERNAL: Final = Span.SpanKind.SPAN_KIND_INTERNAL
_PRODUCER: Final = Span.SpanKind.SPAN_KIND_PRODUCER
_CONSUMER: Final = Span.SpanKind.SPAN_KIND_CONSUMER
_UNSET: Final = Status.StatusCode.STATUS_CODE_UNSET
_OK: Final = Status.StatusCode.STATUS_CODE_OK
_ERROR: Final = Status.StatusCode.STATUS_CODE_ERROR
# W3C sampled flag plus the OTLP "has is_remote" bit, and the "is remote" bit for spans whose
# parent came over the wire (server and consumer spans).
_FLAGS_LOCAL: Final = 0x101
_FLAGS_REMOTE: Final = 0x301

#: Own-failure probability = error_rate / this; calibrated so that own failures plus their
#: propagation to client and parent spans give about ``error_rate`` of all spans in ERROR.
_ERROR_AMPLIFICATION: Final = 1.7
#: Chance that a failed child call (or query) makes the calling handler fail as well.
_PROPAGATION: Final = 0.5

_HTTP_ERRORS: Final = ((500, "Internal Server Error"), (503, "Service Unavailable"))
_GRPC_ERRORS: Final = (
    (13, "INTERNAL", "internal error"),
    (14, "UNAVAILABLE", "connection refused"),
    (4, "DEADLINE_EXCEEDED", "context deadline exceeded"),
)
_DB_ERRORS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "postgresql": (
        ("57014", "canceling statement due to statement timeout"),
        ("40P01", "deadlock detected"),
    ),
    "redis": (
        ("timeout", "i/o timeout"),
        ("READONLY", "READONLY You can't write against a read only replica."),
    ),
}
_EXCEPTIONS: Final[dict[str, str]] = {
    "go": "*errors.errorString",
    "java": "java.lang.IllegalStateException",
    "python": "RuntimeError",
    "nodejs": "Error",
    "dotnet": "System.InvalidOperationException",
    "ruby": "StandardError",
    "php": "RuntimeException",
    "cpp": "std::runtime_error",
    "rust": "anyhow::Error",
}
_SDK_VERSIONS: Final[dict[str, str]] = {
    "go": "1.32.0",
    "java": "1.44.1",
    "python": "1.28.2",
    "nodejs": "1.29.0",
    "dotnet": "1.10.0",
    "ruby": "1.4.1",
    "php": "1.1.2",
    "cpp": "1.17.0",
    "rust": "0.27.1",
}
# Instrumentation scopes per language and role; a missing role falls back to the service's own
# tracer (manual instrumentation), as for C++ services.
_SCOPES: Final[dict[str, dict[str, tuple[str, str]]]] = {
    "go": {
        "http": ("go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp", "0.57.0"),
        "grpc": ("go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc", "0.57.0"),
        "postgresql": ("github.com/XSAM/otelsql", "0.36.0"),
        "redis": ("github.com/redis/go-redis/extra/redisotel", "9.7.0"),
        "kafka": ("go.opentelemetry.io/contrib/instrumentation/github.com/IBM/sarama/otelsarama", "0.43.0"),
    },
    "java": {
        "http": ("io.opentelemetry.netty-4.1", "2.10.0-alpha"),
        "http_client": ("io.opentelemetry.java-http-client", "2.10.0-alpha"),
        "grpc": ("io.opentelemetry.grpc-1.6", "2.10.0-alpha"),
        "postgresql": ("io.opentelemetry.jdbc", "2.10.0-alpha"),
        "redis": ("io.opentelemetry.lettuce-5.1", "2.10.0-alpha"),
        "kafka": ("io.opentelemetry.kafka-clients-2.6", "2.10.0-alpha"),
    },
    "python": {
        "http": ("opentelemetry.instrumentation.fastapi", "0.49b2"),
        "http_client": ("opentelemetry.instrumentation.httpx", "0.49b2"),
        "grpc": ("opentelemetry.instrumentation.grpc", "0.49b2"),
        "postgresql": ("opentelemetry.instrumentation.psycopg", "0.49b2"),
        "redis": ("opentelemetry.instrumentation.redis", "0.49b2"),
        "kafka": ("opentelemetry.instrumentation.confluent_kafka", "0.49b2"),
    },
    "nodejs": {
        "http": ("@opentelemetry/instrumentation-http", "0.56.0"),
        "grpc": ("@opentelemetry/instrumentation-grpc", "0.56.0"),
        "postgresql": ("@opentelemetry/instrumentation-pg", "0.49.0"),
        "redis": ("@opentelemetry/instrumentation-ioredis", "0.46.0"),
        "kafka": ("@opentelemetry/instrumentation-kafkajs", "0.6.0"),
    },
    "dotnet": {
        "http": ("Microsoft.AspNetCore", ""),
        "http_client": ("System.Net.Http", ""),
        "grpc": ("Microsoft.AspNetCore", ""),
        "grpc_client": ("Grpc.Net.Client", ""),
        "postgresql": ("Npgsql", "8.0.6"),
        "redis": ("OpenTelemetry.Instrumentation.StackExchangeRedis", "1.10.0-beta.1"),
        "kafka": ("OpenTelemetry.Instrumentation.ConfluentKafka", "0.1.0-alpha.2"),
    },
    "ruby": {
        "http": ("OpenTelemetry::Instrumentation::Rack", "0.25.0"),
        "http_client": ("OpenTelemetry::Instrumentation::Net::HTTP", "0.22.8"),
        "postgresql": ("OpenTelemetry::Instrumentation::PG", "0.29.1"),
        "redis": ("OpenTelemetry::Instrumentation::Redis", "0.25.7"),
        "kafka": ("OpenTelemetry::Instrumentation::Rdkafka", "0.4.8"),
    },
    "php": {
        "http": ("io.opentelemetry.contrib.php.slim", "1.0.4"),
        "http_client": ("io.opentelemetry.contrib.php.guzzle", "1.0.2"),
        "postgresql": ("io.opentelemetry.contrib.php.pdo", "0.0.11"),
    },
    "rust": {
        "http": ("opentelemetry-instrumentation-actix-web", "0.17.0"),
        "grpc": ("tonic-tracing-opentelemetry", "0.24.0"),
    },
}
_CLIENT_AGENTS: Final[dict[str, str]] = {
    "go": "Go-http-client/1.1",
    "java": "Java-http-client/21.0.5",
    "python": "python-httpx/0.28.1",
    "nodejs": "node",
    "dotnet": "",
    "ruby": "Ruby",
    "php": "GuzzleHttp/7",
    "cpp": "",
    "rust": "reqwest/0.12.9",
}
_BROWSERS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
)
_KAFKA_ADDRESS: Final = "kafka"
_KAFKA_PORT: Final = 9092
_KAFKA_PARTITIONS: Final = 6

# Call kinds in the compiled plan.
_K_REMOTE: Final = 0
_K_LEAF: Final = 1  # database, external and internal spans: one span, no children
_K_PUBLISH: Final = 2


_Value: TypeAlias = str | int | float | bool
_Attrs: TypeAlias = list[tuple[str, _Value]]


def _kv(key: str, value: _Value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _template(
    name: str,
    kind: Span.SpanKind.ValueType,
    attrs: Sequence[tuple[str, _Value]],
    flags: int,
    status: Status.StatusCode.ValueType = Status.StatusCode.STATUS_CODE_UNSET,
    message: str = "",
    exception: tuple[str, str] | None = None,
) -> Span:
    span = Span(name=name, kind=kind, flags=flags, attributes=[_kv(k, v) for k, v in attrs])
    if status:
        span.status.code = status
        if message:
            span.status.message = message
    if exception is not None:
        event = span.events.add()
        event.name = "exception"
        event.attributes.extend([_kv("exception.type", exception[0]), _kv("exception.message", exception[1])])
    return span


class _Dist:
    """A compiled ``Latency``: samples integer nanoseconds."""

    __slots__ = ("mu", "outlier_rate", "sigma")

    def __init__(self, latency: Latency) -> None:
        self.mu = math.log(latency.median_ms * 1e6)
        self.sigma = latency.sigma
        self.outlier_rate = latency.outlier_rate

    def sample(self, rng: random.Random) -> int:
        ns = math.exp(self.mu + self.sigma * rng.gauss(0.0, 1.0))
        if rng.random() < self.outlier_rate:
            ns *= rng.uniform(5.0, 30.0)
        return int(ns) + 1000


class _Op:
    """A compiled operation: where it runs, its span templates (index 0 ok, 1.. error variants)."""

    __slots__ = (
        "calls",
        "latency",
        "n_errors",
        "parallel",
        "path_kv",
        "path_parts",
        "protocol",
        "resources",
        "scope",
        "templates",
        "topic",
    )

    def __init__(self) -> None:
        self.calls: tuple[_Call, ...] = ()
        self.templates: tuple[Span, ...] = ()
        self.n_errors = 0
        self.latency: _Dist
        self.parallel = False
        self.protocol: Protocol = "http"
        self.path_parts: tuple[str, str] | None = None  # route split at "{id}"
        self.path_kv: KeyValue | None = None  # constant url.path
        self.resources: tuple[Resource, ...] = ()
        self.scope: InstrumentationScope
        self.topic = ""


class _Call:
    """A compiled call of an operation, with its caller-side span templates."""

    __slots__ = (
        "consumers",
        "has_event",
        "kind",
        "latency",
        "max_repeat",
        "n_errors",
        "probability",
        "scope",
        "target",
        "templates",
        "ua_kv",
    )

    def __init__(self, kind: int, probability: float, max_repeat: int, scope: InstrumentationScope) -> None:
        self.kind = kind
        self.probability = probability
        self.max_repeat = max_repeat
        self.scope = scope
        self.templates: tuple[Span, ...] = ()
        self.n_errors = 0
        self.has_event = False
        self.latency = _Dist(_NETWORK)
        self.target: _Op | None = None
        self.consumers: tuple[_Op, ...] = ()
        self.ua_kv: KeyValue | None = None


# One span in the making: resource, scope, span, start, end, whether its exception event needs a time.
_Record: TypeAlias = tuple[Resource, InstrumentationScope, Span, int, int, bool]


class TraceGenerator:
    """Generates traces from a ``TrafficModel``; same model and seed -> identical spans.

    All protobuf pieces that do not change between traces (resources, scopes, span names, kinds
    and constant attributes) are built once here; a span is a ``CopyFrom`` of its template plus
    ids, times and a few variable attributes. The returned ``Resource`` and
    ``InstrumentationScope`` objects are shared between traces: treat them as read-only.
    """

    def __init__(self, model: TrafficModel, seed: int | None = None) -> None:
        self.model = model
        self._rng = random.Random(model.seed if seed is None else seed)
        self._p_fail = model.error_rate / _ERROR_AMPLIFICATION
        self._queue_lag = _Dist(_QUEUE_LAG)
        self._scopes: dict[tuple[str, str], InstrumentationScope] = {}
        self._browser_kvs = tuple(_kv("user_agent.original", ua) for ua in _BROWSERS)
        self._offsets: dict[str, list[int]] = {}
        self._ops: dict[tuple[str, str], _Op] = {}
        self._resources: dict[str, tuple[Resource, ...]] = {}
        self._compile()
        entry = model.service(model.entry)
        self._entry_ops = tuple(self._ops[(entry.name, op.name)] for op in entry.operations)
        weights = [op.weight for op in entry.operations]
        self._entry_cum = tuple(sum(weights[: i + 1]) for i in range(len(weights)))

    # -- compilation -------------------------------------------------------------------------

    def _scope(self, service: Service, role: str) -> InstrumentationScope:
        table = _SCOPES.get(service.language, {})
        fallback = role.removesuffix("_client")
        name, version = table.get(role) or table.get(fallback) or (service.name, service.version)
        key = (name, version)
        scope = self._scopes.get(key)
        if scope is None:
            scope = self._scopes[key] = InstrumentationScope(name=name, version=version)
        return scope

    def _resource(self, service: Service, instance: Instance) -> Resource:
        attrs: list[tuple[str, _Value]] = [
            ("service.name", service.name),
            ("service.namespace", "shop"),
            ("service.version", service.version),
            ("service.instance.id", instance.instance_id),
            ("k8s.namespace.name", "shop"),
            ("k8s.deployment.name", service.name),
            ("k8s.pod.name", instance.pod_name),
            ("deployment.environment.name", self.model.environment),
            ("telemetry.sdk.name", "opentelemetry"),
            ("telemetry.sdk.language", service.language),
            ("telemetry.sdk.version", _SDK_VERSIONS.get(service.language, "1.0.0")),
        ]
        return Resource(attributes=[_kv(k, v) for k, v in attrs])

    def _compile(self) -> None:
        model = self.model
        consumer_op: dict[tuple[str, str], _Op] = {}
        for svc in model.topology:
            self._resources[svc.name] = tuple(self._resource(svc, inst) for inst in svc.instances)
            for op in svc.operations:
                cop = _Op()
                cop.resources = self._resources[svc.name]
                self._compile_server(cop, svc, op, remote_parent=svc.name != model.entry)
                self._ops[(svc.name, op.name)] = cop
                if op.protocol == "messaging":
                    consumer_op[(svc.name, op.target)] = cop
        for svc in model.topology:
            for op in svc.operations:
                cop = self._ops[(svc.name, op.name)]
                cop.calls = tuple(self._compile_call(svc, call, consumer_op) for call in op.calls)

    def _compile_server(self, cop: _Op, svc: Service, op: Operation, *, remote_parent: bool) -> None:
        cop.latency = _Dist(op.latency)
        cop.parallel = op.parallel
        cop.protocol = op.protocol
        flags = _FLAGS_REMOTE if remote_parent else _FLAGS_LOCAL
        ok_status = _OK if svc.ok_status else _UNSET
        exc_type = _EXCEPTIONS.get(svc.language, "Error")
        variants: list[Span] = []
        base: _Attrs
        attrs: _Attrs
        if op.protocol == "http":
            cop.scope = self._scope(svc, "http")
            if "{id}" in op.target:
                prefix, _, suffix = op.target.partition("{id}")
                cop.path_parts = (prefix, suffix)
            else:
                cop.path_kv = _kv("url.path", op.target)
            base = [
                ("http.request.method", op.method),
                ("http.route", op.target),
                ("url.scheme", "http"),
                ("server.address", svc.name),
                ("server.port", svc.port),
            ]
            ok_code = 201 if op.method == "POST" else 200
            variants.append(
                _template(op.name, _SERVER, [*base, ("http.response.status_code", ok_code)], flags, ok_status)
            )
            for code, _reason in _HTTP_ERRORS:
                attrs = [*base, ("http.response.status_code", code), ("error.type", str(code))]
                variants.append(
                    _template(op.name, _SERVER, attrs, flags, _ERROR, "", (exc_type, f"{op.name} failed"))
                )
        elif op.protocol == "grpc":
            cop.scope = self._scope(svc, "grpc")
            base = [
                ("rpc.system", "grpc"),
                ("rpc.service", op.target),
                ("rpc.method", op.method),
                ("server.address", svc.name),
                ("server.port", svc.port),
            ]
            variants.append(
                _template(op.name, _SERVER, [*base, ("rpc.grpc.status_code", 0)], flags, ok_status)
            )
            for code, name, message in _GRPC_ERRORS:
                attrs = [*base, ("rpc.grpc.status_code", code), ("error.type", name)]
                variants.append(
                    _template(op.name, _SERVER, attrs, flags, _ERROR, message, (exc_type, message))
                )
        else:
            cop.scope = self._scope(svc, "kafka")
            cop.topic = op.target
            if op.target not in self._offsets:
                self._offsets[op.target] = [self._rng.randrange(10**6) for _ in range(_KAFKA_PARTITIONS)]
            base = [
                ("messaging.system", "kafka"),
                ("messaging.destination.name", op.target),
                ("messaging.operation.type", "process"),
                ("messaging.operation.name", "process"),
                ("messaging.consumer.group.name", svc.name),
                ("server.address", _KAFKA_ADDRESS),
            ]
            variants.append(_template(op.name, _CONSUMER, base, flags, ok_status))
            message = "message processing failed"
            attrs = [*base, ("error.type", exc_type)]
            variants.append(_template(op.name, _CONSUMER, attrs, flags, _ERROR, message, (exc_type, message)))
        cop.templates = tuple(variants)
        cop.n_errors = len(variants) - 1

    def _compile_call(self, svc: Service, call: Call, consumer_op: dict[tuple[str, str], _Op]) -> _Call:
        exc_type = _EXCEPTIONS.get(svc.language, "Error")
        base: _Attrs
        attrs: _Attrs
        variants: list[Span]
        if isinstance(call, RemoteCall):
            callee = self.model.service(call.service)
            target_op = callee.operation(call.operation)
            c = _Call(
                _K_REMOTE, call.probability, call.max_repeat, self._scope(svc, f"{target_op.protocol}_client")
            )
            c.target = self._ops[(callee.name, target_op.name)]
            c.latency = _Dist(_NETWORK)
            peer: _Attrs = [("peer.service", callee.name)] if svc.peer_service else []
            variants = []
            if target_op.protocol == "http":
                agent = _CLIENT_AGENTS.get(svc.language, "")
                c.ua_kv = _kv("user_agent.original", agent) if agent else None
                base = [
                    ("http.request.method", target_op.method),
                    ("server.address", callee.name),
                    ("server.port", callee.port),
                    ("network.protocol.version", "1.1"),
                    *peer,
                ]
                ok_code = 201 if target_op.method == "POST" else 200
                name = target_op.method
                variants.append(
                    _template(name, _CLIENT, [*base, ("http.response.status_code", ok_code)], _FLAGS_LOCAL)
                )
                for code, _reason in _HTTP_ERRORS:
                    attrs = [*base, ("http.response.status_code", code), ("error.type", str(code))]
                    variants.append(_template(name, _CLIENT, attrs, _FLAGS_LOCAL, _ERROR))
            else:
                base = [
                    ("rpc.system", "grpc"),
                    ("rpc.service", target_op.target),
                    ("rpc.method", target_op.method),
                    ("server.address", callee.name),
                    ("server.port", callee.port),
                    *peer,
                ]
                name = target_op.name
                variants.append(_template(name, _CLIENT, [*base, ("rpc.grpc.status_code", 0)], _FLAGS_LOCAL))
                for code, gname, message in _GRPC_ERRORS:
                    attrs = [*base, ("rpc.grpc.status_code", code), ("error.type", gname)]
                    variants.append(_template(name, _CLIENT, attrs, _FLAGS_LOCAL, _ERROR, message))
            # The callee's failure index selects the client variant: same code on both sides.
            c.templates = tuple(variants)
            return c
        if isinstance(call, DatabaseCall):
            c = _Call(_K_LEAF, call.probability, call.max_repeat, self._scope(svc, call.system))
            c.latency = _Dist(call.latency)
            c.has_event = True
            if call.system == "postgresql":
                address, port = "postgres", 5432
                name = f"{call.operation} {call.namespace}.{call.collection}"
            else:
                address, port = "redis", 6379
                name = call.operation
            if svc.legacy_db_semconv:
                base = [
                    ("db.system", call.system),
                    ("db.name", call.namespace),
                    ("db.operation", call.operation),
                    ("db.statement", call.statement),
                ]
                if call.system == "postgresql":
                    base.append(("db.sql.table", call.collection))
            else:
                base = [
                    ("db.system", call.system),
                    ("db.namespace", call.namespace),
                    ("db.operation.name", call.operation),
                    ("db.collection.name", call.collection),
                    ("db.query.text", call.statement),
                ]
            base += [("server.address", address), ("server.port", port)]
            variants = [_template(name, _CLIENT, base, _FLAGS_LOCAL)]
            for db_code, message in _DB_ERRORS[call.system]:
                attrs = [*base, ("error.type", db_code)]
                variants.append(
                    _template(name, _CLIENT, attrs, _FLAGS_LOCAL, _ERROR, message, (exc_type, message))
                )
            c.templates = tuple(variants)
            c.n_errors = len(variants) - 1
            return c
        if isinstance(call, ExternalCall):
            c = _Call(_K_LEAF, call.probability, 1, self._scope(svc, "http_client"))
            c.latency = _Dist(call.latency)
            base = [
                ("http.request.method", call.method),
                ("url.path", call.path),
                ("url.scheme", "https"),
                ("server.address", call.address),
                ("server.port", 443),
                ("peer.service", call.peer_service),
            ]
            name = call.method
            variants = [_template(name, _CLIENT, [*base, ("http.response.status_code", 200)], _FLAGS_LOCAL)]
            for code, _reason in (*_HTTP_ERRORS, (502, "Bad Gateway")):
                attrs = [*base, ("http.response.status_code", code), ("error.type", str(code))]
                variants.append(_template(name, _CLIENT, attrs, _FLAGS_LOCAL, _ERROR))
            c.templates = tuple(variants)
            c.n_errors = len(variants) - 1
            return c
        if isinstance(call, PublishCall):
            c = _Call(_K_PUBLISH, call.probability, 1, self._scope(svc, "kafka"))
            c.latency = _Dist(_PUBLISH)
            c.consumers = tuple(consumer_op[(consumer, call.topic)] for consumer in call.consumers)
            if call.topic not in self._offsets:
                self._offsets[call.topic] = [self._rng.randrange(10**6) for _ in range(_KAFKA_PARTITIONS)]
            base = [
                ("messaging.system", "kafka"),
                ("messaging.destination.name", call.topic),
                ("messaging.operation.type", "send"),
                ("messaging.operation.name", "publish"),
                ("messaging.client.id", f"{svc.name}-producer"),
                ("server.address", _KAFKA_ADDRESS),
                ("server.port", _KAFKA_PORT),
            ]
            name = f"publish {call.topic}"
            message = "Local: Message timed out"
            variants = [_template(name, _PRODUCER, base, _FLAGS_LOCAL)]
            variants.append(
                _template(
                    name, _PRODUCER, [*base, ("error.type", "_MSG_TIMED_OUT")], _FLAGS_LOCAL, _ERROR, message
                )
            )
            c.templates = tuple(variants)
            c.n_errors = 1
            return c
        # InternalCall
        c = _Call(_K_LEAF, call.probability, 1, self._scope(svc, "internal"))
        c.latency = _Dist(call.latency)
        c.has_event = True
        namespace, _, function = call.function.rpartition(".")
        base = [
            ("code.function", function or call.function),
            ("code.namespace", namespace or svc.name),
            ("code.filepath", f"src/{svc.name}/{(namespace or svc.name).lower().replace('.', '/')}"),
            ("code.lineno", 40 + len(call.name) * 7),
            ("thread.name", "main"),
        ]
        message = f"{call.name} failed"
        variants = [_template(call.name, _INTERNAL, base, _FLAGS_LOCAL)]
        variants.append(
            _template(call.name, _INTERNAL, base, _FLAGS_LOCAL, _ERROR, message, (exc_type, message))
        )
        c.templates = tuple(variants)
        c.n_errors = 1
        return c

    # -- generation --------------------------------------------------------------------------

    def _span_id(self) -> bytes:
        return self._rng.randbytes(8)

    def _visit(
        self,
        op: _Op,
        trace_id: bytes,
        parent_id: bytes,
        start: int,
        extra: Sequence[KeyValue],
        recs: list[_Record],
    ) -> tuple[int, int]:
        """One server (or consumer) span and its subtree; returns (end, failure variant or 0)."""
        rng = self._rng
        resources = op.resources
        resource = resources[int(rng.random() * len(resources))]
        span_id = rng.randbytes(8)
        index = len(recs)
        recs.append(_PLACEHOLDER)
        own = op.latency.sample(rng)
        quarter = own >> 2
        t = start + quarter
        child_failed = False
        calls = op.calls
        if calls:
            between = (own >> 1) // len(calls)
            if op.parallel:
                latest = t
                for call in calls:
                    if call.probability < 1.0 and rng.random() >= call.probability:
                        continue
                    repeat = call.max_repeat if call.max_repeat == 1 else rng.randint(1, call.max_repeat)
                    for _ in range(repeat):
                        end, failed = self._call(call, resource, trace_id, span_id, t + between, recs)
                        latest = max(latest, end)
                        child_failed = child_failed or failed
                t = latest
            else:
                for call in calls:
                    if call.probability < 1.0 and rng.random() >= call.probability:
                        continue
                    repeat = call.max_repeat if call.max_repeat == 1 else rng.randint(1, call.max_repeat)
                    for _ in range(repeat):
                        t, failed = self._call(call, resource, trace_id, span_id, t + between, recs)
                        child_failed = child_failed or failed
        end = t + quarter
        failure = 0
        if rng.random() < self._p_fail or (child_failed and rng.random() < _PROPAGATION):
            failure = 1 + int(rng.random() * op.n_errors)
        span = Span()
        span.CopyFrom(op.templates[failure])
        span.trace_id = trace_id
        span.span_id = span_id
        if parent_id:
            span.parent_span_id = parent_id
        if extra:
            span.attributes.extend(extra)
        if op.protocol == "grpc":
            kv = span.attributes.add()
            kv.key = "network.peer.port"
            kv.value.int_value = 32768 + int(rng.random() * 28000)
        recs[index] = (resource, op.scope, span, start, end, failure != 0)
        return end, failure

    def _path_kv(self, op: _Op) -> KeyValue:
        if op.path_kv is not None:
            return op.path_kv
        assert op.path_parts is not None
        prefix, suffix = op.path_parts
        return KeyValue(
            key="url.path",
            value=AnyValue(string_value=f"{prefix}{1 + int(self._rng.random() * 9999)}{suffix}"),
        )

    def _call(
        self,
        call: _Call,
        resource: Resource,
        trace_id: bytes,
        parent_id: bytes,
        t: int,
        recs: list[_Record],
    ) -> tuple[int, bool]:
        """The caller-side span of one call (and the callee subtree); returns (end, failed)."""
        rng = self._rng
        span_id = rng.randbytes(8)
        kind = call.kind
        index = len(recs)
        recs.append(_PLACEHOLDER)
        extra: Sequence[KeyValue] = ()
        if kind == _K_REMOTE:
            target = call.target
            assert target is not None
            if target.protocol == "http":
                path_kv = self._path_kv(target)
                extra = (path_kv, call.ua_kv) if call.ua_kv is not None else (path_kv,)
            net = call.latency.sample(rng)
            half = net >> 1
            server_end, failure = self._visit(target, trace_id, span_id, t + half, extra, recs)
            end = server_end + net - half
            extra = extra[:1]  # the client span carries url.path but not the user agent
            event = False
        else:
            end = t + call.latency.sample(rng)
            failure = 0
            if rng.random() < self._p_fail:
                failure = 1 + int(rng.random() * call.n_errors)
            event = failure != 0 and call.has_event
            if kind == _K_PUBLISH and not failure and call.consumers:
                offsets = self._offsets[call.consumers[0].topic]
                partition = int(rng.random() * _KAFKA_PARTITIONS)
                offsets[partition] += 1
                msg = (
                    _kv("messaging.destination.partition.id", str(partition)),
                    _kv("messaging.kafka.offset", offsets[partition]),
                )
                for consumer in call.consumers:
                    self._visit(consumer, trace_id, span_id, end + self._queue_lag.sample(rng), msg, recs)
        span = Span()
        span.CopyFrom(call.templates[failure])
        span.trace_id = trace_id
        span.span_id = span_id
        span.parent_span_id = parent_id
        if extra:
            span.attributes.extend(extra)
        recs[index] = (resource, call.scope, span, t, end, event)
        return end, failure != 0

    def _generate(self, now_ns: int) -> tuple[bytes, list[tuple[Resource, InstrumentationScope, Span]]]:
        rng = self._rng
        trace_id = rng.randbytes(16)
        op = self._entry_ops[0]
        pick = rng.random() * self._entry_cum[-1]
        for candidate, cum in zip(self._entry_ops, self._entry_cum, strict=True):
            if pick < cum:
                op = candidate
                break
        browser = self._browser_kvs[int(rng.random() * len(self._browser_kvs))]
        recs: list[_Record] = []
        self._visit(op, trace_id, b"", 0, (self._path_kv(op), browser), recs)
        # Times were relative to the root start; shift so the last span ends at now_ns.
        shift = now_ns - max(r[4] for r in recs)
        if shift < 0:
            raise ValueError(f"now_ns must be a unix time in nanoseconds, got {now_ns}")
        out: list[tuple[Resource, InstrumentationScope, Span]] = []
        for resource, scope, span, start, end, event in recs:
            span.start_time_unix_nano = start + shift
            span.end_time_unix_nano = end + shift
            if event:
                span.events[0].time_unix_nano = end + shift - 1000
            out.append((resource, scope, span))
        return trace_id, out

    # -- public API --------------------------------------------------------------------------

    def next_trace(self, now_ns: int) -> list[tuple[Resource, InstrumentationScope, Span]]:
        """One trace as (resource, scope, span) triples, parents before children; ends at ``now_ns``."""
        return self._generate(now_ns)[1]

    def trace_request(self, now_ns: int) -> tuple[bytes, ExportTraceServiceRequest]:
        """One trace as one request, keyed like the Collector's Kafka exporter does.

        With ``partition_traces_by_id`` the exporter splits a batch per trace and sets the message
        key to the trace ID as lowercase hex text (``traceutil.TraceIDToHexOrEmptyString``), so the
        key here is those 32 ASCII bytes. The request has one ResourceSpans per distinct resource
        and, inside, one ScopeSpans per instrumentation scope.
        """
        trace_id, spans = self._generate(now_ns)
        return trace_id.hex().encode("ascii"), _group(spans)

    def batch_request(self, traces: int, now_ns: int) -> ExportTraceServiceRequest:
        """``traces`` traces in one request grouped by resource, as an unpartitioned batch looks."""
        spans: list[tuple[Resource, InstrumentationScope, Span]] = []
        for _ in range(traces):
            spans.extend(self._generate(now_ns)[1])
        return _group(spans)


_PLACEHOLDER: Final[_Record] = (Resource(), InstrumentationScope(), Span(), 0, 0, False)


def _group(spans: Iterable[tuple[Resource, InstrumentationScope, Span]]) -> ExportTraceServiceRequest:
    """Build a request with one ResourceSpans per resource object and one ScopeSpans per scope."""
    groups: dict[int, tuple[Resource, dict[int, tuple[InstrumentationScope, list[Span]]]]] = {}
    for resource, scope, span in spans:
        entry = groups.get(id(resource))
        if entry is None:
            entry = groups[id(resource)] = (resource, {})
        by_scope = entry[1]
        scoped = by_scope.get(id(scope))
        if scoped is None:
            scoped = by_scope[id(scope)] = (scope, [])
        scoped[1].append(span)
    request = ExportTraceServiceRequest()
    for resource, by_scope in groups.values():
        rs = request.resource_spans.add()
        rs.resource.CopyFrom(resource)
        for scope, scope_spans in by_scope.values():
            ss = rs.scope_spans.add()
            ss.scope.CopyFrom(scope)
            ss.spans.extend(scope_spans)
    return request

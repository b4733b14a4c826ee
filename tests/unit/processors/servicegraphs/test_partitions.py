"""Waiting half-edges per input partition: export, restore on another worker, drop."""

from __future__ import annotations

import msgpack
import pytest

from worker.processors.servicegraphs import ServiceGraphsProcessor

from .helpers import (
    CLIENT,
    CONSUMER,
    DROPPED,
    ERROR,
    PRODUCER,
    REQUEST_FAILED_TOTAL,
    REQUEST_TOTAL,
    SERVER,
    TENANT,
    UNPAIRED,
    Harness,
    make_request,
    make_span,
    resource_spans,
)


def test_pending_edges_are_kept_per_partition() -> None:
    harness = Harness()
    harness.consume(resource_spans("a", make_span(CLIENT, trace=1, span=10)), partition=0)
    harness.consume(resource_spans("b", make_span(SERVER, trace=1, span=11, parent=10)), partition=1)
    # Partitions never pair with each other: Kafka keys by trace id, so both sides share one.
    assert harness.processor.pending_count(0) == 1
    assert harness.processor.pending_count(1) == 1
    assert harness.processor.pending_count() == 2
    assert harness.processor.partitions() == [0, 1]


def test_drop_partition_forgets_its_edges_without_recording_anything() -> None:
    harness = Harness()
    harness.consume(resource_spans("a", make_span(SERVER, span=1)), partition=4)
    harness.processor.drop_partition(4)
    harness.processor.drop_partition(99)  # unknown: nothing to do
    assert harness.processor.pending_count() == 0
    harness.expire_after(60)
    assert harness.processor.take_deltas() == {}


def test_a_restored_half_edge_pairs_on_the_new_owner() -> None:
    old = Harness()
    client = make_span(CLIENT, span=10, duration_ms=50, status=ERROR, attributes={"peer.service": "checkout"})
    old.consume(resource_spans("frontend", client), tenant="t1", partition=3)
    blob = old.processor.export_pending(3)
    assert old.processor.pending_count(3) == 1  # exporting does not remove

    new = Harness()
    assert new.processor.restore_pending(3, blob, new.clock()) == 1
    assert new.processor.pending_count(3) == 1
    new.consume(resource_spans("checkout", make_span(SERVER, span=11, parent=10)), tenant="t1", partition=3)
    assert new.processor.pending_count() == 0
    # Everything the first side carried survived the move: service, latency, failure.
    assert new.count(REQUEST_TOTAL, tenant="t1", client="frontend", server="checkout") == 1
    assert new.count(REQUEST_FAILED_TOTAL, tenant="t1", client="frontend", server="checkout") == 1


def test_the_remaining_wait_survives_the_move() -> None:
    old = Harness(wait=10.0)
    old.consume(resource_spans("frontend", make_span(SERVER, trace=1, span=1)), partition=0)
    old.clock.advance(4)
    old.consume(resource_spans("frontend", make_span(SERVER, trace=2, span=1)), partition=0)
    old.clock.advance(1)  # 5 s left for the first, 9 s for the second
    blob = old.processor.export_pending(0)

    new = Harness(wait=10.0)
    new.clock.advance(300)  # however long the partition had no owner
    new.processor.restore_pending(0, blob, new.clock())
    new.expire_after(4.999)
    assert new.processor.pending_count() == 2
    new.expire_after(0.001)
    assert new.processor.pending_count() == 1
    new.expire_after(4)
    assert new.processor.pending_count() == 0
    assert new.count(REQUEST_TOTAL, client="user", server="frontend", connection_type="virtual_node") == 2


def test_restored_edges_keep_peer_and_dimensions_for_expiry() -> None:
    old = Harness(dimensions=("region",), enable_virtual_node_label=True)
    call = make_span(CLIENT, span=10, attributes={"peer.service": "stripe", "region": "eu"})
    old.consume(resource_spans("payment", call))
    blob = old.processor.export_pending(0)
    new = Harness(dimensions=("region",), enable_virtual_node_label=True)
    new.processor.restore_pending(0, blob, new.clock())
    new.expire_after(10)
    assert new.label_sets(REQUEST_TOTAL) == [
        {
            "client": "payment",
            "server": "stripe",
            "connection_type": "virtual_node",
            "region": "eu",
            "virtual_node": "server",
        }
    ]


def test_restore_keeps_every_tenant_and_the_messaging_fields() -> None:
    old = Harness(enable_messaging_system_latency_histogram=True)
    producer = make_span(PRODUCER, span=20, duration_ms=2)
    old.consume(resource_spans("shipping", producer), tenant="a")
    old.consume(resource_spans("other", make_span(CLIENT, trace=9, span=10)), tenant="b")
    new = Harness(enable_messaging_system_latency_histogram=True)
    assert new.processor.restore_pending(0, old.processor.export_pending(0), new.clock()) == 2
    new.consume(resource_spans("email", make_span(CONSUMER, span=21, parent=20, start_ms=12)), tenant="a")
    labels = {"client": "shipping", "server": "email", "connection_type": "messaging_system"}
    messaging = new.get("traces_service_graph_request_messaging_system_seconds", tenant="a", **labels)
    assert messaging is not None and messaging.sum == pytest.approx(0.010)
    new.expire_after(10)
    assert new.label_sets(UNPAIRED, tenant="b") == [{"client": "other"}]


def test_restoring_twice_changes_nothing() -> None:
    old = Harness()
    old.consume(resource_spans("a", make_span(CLIENT, span=10)))
    blob = old.processor.export_pending(0)
    new = Harness()
    assert new.processor.restore_pending(0, blob, new.clock()) == 1
    assert new.processor.restore_pending(0, blob, new.clock()) == 0
    assert new.processor.pending_count() == 1


def test_restore_merges_in_deadline_order() -> None:
    old = Harness(wait=10.0)
    old.consume(resource_spans("old", make_span(SERVER, trace=1, span=1)))
    blob = old.processor.export_pending(0)  # 10 s left

    new = Harness(wait=10.0)
    new.consume(resource_spans("live", make_span(SERVER, trace=2, span=1)))
    new.clock.advance(5)  # the live edge has 5 s left, the restored one will have 10 s
    new.processor.restore_pending(0, blob, new.clock())
    new.expire_after(5)
    assert new.label_sets(REQUEST_TOTAL) == [
        {"client": "user", "server": "live", "connection_type": "virtual_node"}
    ]
    new.expire_after(5)
    assert new.processor.pending_count() == 0


def test_restore_respects_max_items() -> None:
    old = Harness()
    old.consume(resource_spans("a", *[make_span(CLIENT, trace=t, span=10) for t in range(1, 6)]), partition=7)
    blob = old.processor.export_pending(7)
    new = Harness(max_items=3)
    new.consume(resource_spans("b", make_span(CLIENT, trace=100, span=10)), partition=1)
    assert new.processor.restore_pending(7, blob, new.clock()) == 2
    assert new.processor.pending_count() == 3
    assert new.count(DROPPED, client="a") == 3


def test_restore_never_waits_longer_than_its_own_wait() -> None:
    old = Harness(wait=60.0)
    old.consume(resource_spans("a", make_span(SERVER, span=1)))
    new = Harness(wait=5.0)
    new.processor.restore_pending(0, old.processor.export_pending(0), new.clock())
    new.expire_after(5)
    assert new.processor.pending_count() == 0


def test_an_empty_partition_exports_an_empty_blob_that_restores_nothing() -> None:
    processor = ServiceGraphsProcessor(Harness().config)
    blob = processor.export_pending(0)
    assert processor.restore_pending(0, blob, 0) == 0
    assert processor.pending_count() == 0


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\xc1",
        msgpack.packb([99, []]),
        msgpack.packb([1, [["t", [["short row"]]]]]),
        msgpack.packb({"not": "a list"}),
    ],
)
def test_a_damaged_or_foreign_blob_is_refused_and_restores_nothing(blob: bytes) -> None:
    harness = Harness()
    with pytest.raises(ValueError):
        harness.processor.restore_pending(0, blob, harness.clock())
    assert harness.processor.pending_count() == 0


def test_consume_accepts_a_whole_request_per_partition() -> None:
    harness = Harness()
    request = make_request(
        resource_spans("a", make_span(CLIENT, span=10)),
        resource_spans("b", make_span(SERVER, span=11, parent=10)),
    )
    stats = harness.processor.consume(request, "t", 5)
    assert stats.edges == 1
    assert harness.processor.pending_count(5) == 0


def test_a_restored_edge_expires_under_the_kind_of_its_last_span() -> None:
    # upstream: servicegraphs.go onExpire counts expired_edges{unmatched_span_kind} by the Edge's
    # SpanKind (the span that touched it last); the handover keeps it.
    old = Harness()
    old.consume(resource_spans("shipping", make_span(PRODUCER, span=20)))
    new = Harness()
    assert new.processor.restore_pending(0, old.processor.export_pending(0), new.clock()) == 1
    new.expire_after(10)
    assert new.processor.expired_edges == {(TENANT, "SPAN_KIND_PRODUCER"): 1}


def test_a_version_1_export_of_an_older_worker_still_restores() -> None:
    # The rows of version 1 have no span kind nor multiplier: they restore with none and 1.
    row = [
        bytes(16),
        (10).to_bytes(8, "big"),
        5_000_000_000,
        "",
        "payment",
        "",
        0.28,
        0.0,
        0,
        0,
        False,
        "stripe",
        None,
    ]
    blob = msgpack.packb([1, [[TENANT, [row]]]], use_bin_type=True)
    new = Harness()
    assert new.processor.restore_pending(0, blob, new.clock()) == 1
    new.expire_after(5)
    assert new.count(REQUEST_TOTAL, client="payment", server="stripe", connection_type="virtual_node") == 1

#!/bin/sh
# One-shot topic creation for the docker-compose stack (runs in the apache/kafka image).
# Idempotent: --if-not-exists, so `docker compose up` again is fine. The workers start only
# after this exits 0 (depends_on: service_completed_successfully).
set -eu

BOOTSTRAP="${BOOTSTRAP_SERVERS:-kafka:9092}"
INPUT_PARTITIONS="${INPUT_PARTITIONS:-12}"
TOPICS_BIN=/opt/kafka/bin/kafka-topics.sh

create() {
  topic="$1"
  partitions="$2"
  shift 2
  "$TOPICS_BIN" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$topic" --partitions "$partitions" --replication-factor 1 "$@"
}

# Wait for the broker (the compose healthcheck already did, but a bare `docker run` may not).
tries=0
until "$TOPICS_BIN" --bootstrap-server "$BOOTSTRAP" --list >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "create-topics: broker $BOOTSTRAP not reachable after 60 tries" >&2
    exit 1
  fi
  sleep 2
done

# Input: keyed by trace ID; the partition count caps the useful number of workers.
create otlp_spans "$INPUT_PARTITIONS"
# Output: OTLP ExportMetricsServiceRequest records for the Collector's kafka receiver.
create otlp_metrics 3
# Dead letters: undecodable input, kept a week.
create otlp_spans_dlq 1 --config retention.ms=604800000

"$TOPICS_BIN" --bootstrap-server "$BOOTSTRAP" --describe --topic otlp_spans
echo "create-topics: done"

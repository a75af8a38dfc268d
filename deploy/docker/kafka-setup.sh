#!/usr/bin/env bash
# One-shot setup of a SASL Kafka for streamjobs (docker-compose.sasl.yml): as the admin,
# create each service's SCRAM-SHA-512 user, the topics, and the ACLs of
# deploy/localstack/acls.py (tests/unit/test_ops_compose.py checks both say the same).
# Re-running it is harmless: users are upserted, topics --if-not-exists, ACLs idempotent.
set -euo pipefail

BIN=/opt/kafka/bin
P="${TOPIC_PREFIX:-streamjobs}"
CONFIG=/tmp/admin.properties
printf 'security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="%s";\n' \
  "$ADMIN_PASSWORD" > "$CONFIG"

user() {  # user NAME PASSWORD
  "$BIN/kafka-configs.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$CONFIG" \
    --alter --entity-type users --entity-name "$1" \
    --add-config "SCRAM-SHA-512=[iterations=8192,password=$2]"
}

grant() {  # grant PRINCIPAL OPERATION topic|group literal|prefixed NAME...
  local principal=$1 operation=$2 resource=$3 pattern=$4
  shift 4
  local names=()
  for name in "$@"; do names+=("--$resource" "$name"); done
  "$BIN/kafka-acls.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$CONFIG" --add \
    --allow-principal "User:$principal" --operation "$operation" \
    --resource-pattern-type "$pattern" "${names[@]}" >/dev/null
}

user gateway "$GATEWAY_PASSWORD"
user streamer "$STREAMER_PASSWORD"
user results "$RESULTS_PASSWORD"
user notifier "$NOTIFIER_PASSWORD"

# One broker here; against a cluster of three set REPLICATION_FACTOR=3 MIN_INSYNC_REPLICAS=2,
# the values the services' KAFKA_REPLICATION_FACTOR / KAFKA_MIN_INSYNC_REPLICAS use.
REPLICAS=(--replication-factor "${REPLICATION_FACTOR:-1}"
  --config "min.insync.replicas=${MIN_INSYNC_REPLICAS:-1}")

topics() {  # topics [--config K=V] NAME...: create each if it is missing
  local config=()
  if [ "$1" = --config ]; then config=(--config "$2"); shift 2; fi
  for topic in "$@"; do
    "$BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$CONFIG" \
      --create --if-not-exists --topic "$topic" --partitions "${JOB_PARTITIONS:-4}" \
      "${REPLICAS[@]}" "${config[@]}"
  done
}
# Job topics carry the broker's append time: a job appended after its accept_by was
# answered 503 by the gateway, and the streamer does not run it.
topics --config message.timestamp.type=LogAppendTime \
  "$P.jobs.urgent" "$P.jobs.high" "$P.jobs.normal" "$P.jobs.low" "$P.jobs.retry"
topics "$P.jobs.dlq" "$P.control" "$P.events" "$P.chunks" "$P.webhooks" "$P.webhooks.retry"
# The gateways' admission requests (append time judges accept_by), decisions and replies: one
# partition count for all three, GATEWAY_ADMISSION_PARTITIONS of the gateways.
JOB_PARTITIONS="${GATEWAY_ADMISSION_PARTITIONS:-8}" topics --config message.timestamp.type=LogAppendTime "$P.admissions"
JOB_PARTITIONS="${GATEWAY_ADMISSION_PARTITIONS:-8}" topics "$P.admission-decisions" "$P.admission-replies"
# Token revocations: compacted, one partition, read whole by every service that checks tokens.
"$BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$CONFIG" \
  --create --if-not-exists --topic "$P.revocations" --partitions 1 "${REPLICAS[@]}" \
  --config cleanup.policy=compact
# Streamer heartbeats: compacted, one partition, the latest per instance read by results.
"$BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$CONFIG" \
  --create --if-not-exists --topic "$P.instances" --partitions 1 "${REPLICAS[@]}" \
  --config cleanup.policy=compact
# Each user's default webhook URL: compacted, one partition, read whole by every gateway.
"$BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$CONFIG" \
  --create --if-not-exists --topic "$P.webhook-defaults" --partitions 1 "${REPLICAS[@]}" \
  --config cleanup.policy=compact

# Every service may describe every topic, so its start-up check finds them all.
grant gateway describe topic prefixed "$P."
grant streamer describe topic prefixed "$P."
grant results describe topic prefixed "$P."
grant notifier describe topic prefixed "$P."
grant doctor describe topic prefixed "$P."

grant gateway write topic literal "$P.jobs.urgent" "$P.jobs.high" "$P.jobs.normal" "$P.jobs.low" "$P.control" "$P.events" "$P.admissions" "$P.admission-decisions" "$P.admission-replies" "$P.webhook-defaults"
grant gateway read topic literal "$P.events" "$P.revocations" "$P.admissions" "$P.admission-decisions" "$P.admission-replies" "$P.webhook-defaults"
grant gateway read group literal "$P-gateway-admission"
grant gateway write transactional-id prefixed "$P-admission-"
grant gateway describe transactional-id prefixed "$P-admission-"

grant streamer read topic literal "$P.jobs.urgent" "$P.jobs.high" "$P.jobs.normal" "$P.jobs.low" "$P.jobs.retry" "$P.control"
grant streamer write topic literal "$P.chunks" "$P.jobs.retry" "$P.events" "$P.jobs.dlq" "$P.instances"
grant streamer read group prefixed streamjobs-streamer

grant results read topic literal "$P.events" "$P.chunks" "$P.revocations" "$P.instances" "$P.webhooks" "$P.webhooks.retry"
grant results write topic literal "$P.jobs.dlq" "$P.webhooks" "$P.webhooks.retry"
grant results read group prefixed streamjobs-results

grant notifier read topic literal "$P.events" "$P.chunks" "$P.revocations"

echo "streamjobs: Kafka users, topics and ACLs are in place"

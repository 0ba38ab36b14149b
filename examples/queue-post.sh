#!/bin/sh
# Queue a build with nothing but redis-cli, tar and base64 — what any CI can do.
# Usage: queue-post.sh CONTEXT_DIR IMAGE_REF [QUEUE] [NAMESPACE]
# The queue is "<namespace>.<executor>" (default runner.socket); REDIS_CLI may add -h/-p/-n.
set -eu
dir=$1 ref=$2 queue=${3:-runner.socket} ns=${4:-runner}
redis=${REDIS_CLI:-redis-cli}
id=$(cat /proc/sys/kernel/random/uuid | tr -d -)

# 1. the build context: a tar stored under NS:ctx:ID (one chunk is fine for small contexts)
tar -C "$dir" -cf - . | $redis -x RPUSH "$ns:ctx:$id" >/dev/null

# 2. the job: the BuildRequest schema (see README "Job message"); unknown fields are rejected
job=$(printf '{"id":"%s","tags":["%s"],"executor":"%s","build_args":{"GREETING":"posted by redis-cli"}}' \
  "$id" "$ref" "${queue##*.}")

# 3. the Celery message (protocol 2): body = base64 of [[job], {}, {}], task runner.build
body=$(printf '[[%s], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]' "$job" | base64 | tr -d '\n')
msg=$(printf '{"body":"%s","content-encoding":"utf-8","content-type":"application/json",
"headers":{"lang":"py","task":"runner.build","id":"%s","root_id":"%s","parent_id":null,"group":null,"retries":0,"eta":null,"expires":null,"timelimit":[null,null]},
"properties":{"correlation_id":"%s","delivery_mode":2,"delivery_info":{"exchange":"","routing_key":"%s"},"priority":0,"body_encoding":"base64","delivery_tag":"%s"}}' \
  "$body" "$id" "$id" "$id" "$queue" "$id")
$redis LPUSH "$queue" "$msg" >/dev/null
echo "$id"

#!/usr/bin/env bash
# Start the 5 nodes of ring.toml on this machine, in a shuffled order, and wait
# for node 0 to finalize. Deliveries go to deliveries-N.jsonl in $OUT (a new
# temporary directory unless set). Run again with the same OUT, the journals
# there (deliveries-N.jsonl.journal) keep every node from sending or
# delivering a message twice.
# Usage: examples/ring/run.sh   (from anywhere; needs 'trionet' on PATH)
set -euo pipefail
cd "$(dirname "$0")"
ring_cmd=${TRIONET_RING:-trionet ring}
out=${OUT:-$(mktemp -d)}
# A fresh shared secret for this run, readable by this user only: every link
# proves it in its handshake (a real ring keeps one file on every host).
secret="$out/ring.secret"
(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$secret")
pids=()
for id in $(printf '%s\n' 0 1 2 3 4 | shuf); do
    $ring_cmd join --config ring.toml --id "$id" --messages "messages-$id.txt" --secret-file "$secret" \
        --deliveries "$out/deliveries-$id.jsonl" --connect-timeout 20 --log-level warning &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
echo "deliveries: $out/deliveries-*.jsonl"
exit $status

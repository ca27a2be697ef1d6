#!/usr/bin/env bash
# Run a command beside a local Ray cluster (2 CPUs, 127.0.0.1), stopped again afterwards; its
# address is in RBFM_RAY_ADDRESS for the Ray executor tests. Without Ray the command runs alone.
#
# Ray's head advertises the machine's own interface address, not 127.0.0.1. Where this shell may
# make a network namespace (root, as in CI), the cluster and the command run in a fresh one whose
# only interface is loopback, so no Ray traffic can leave 127.0.0.1.
set -euo pipefail
BIN="${BIN:-.venv/bin}"
if ! "$BIN/python" -c 'import ray' 2>/dev/null; then
  echo "with-ray-cluster: Ray is not installed; running without a cluster (the Ray tests skip)" >&2
  exec "$@"
fi
if [[ "${RBFM_IN_NETNS:-}" != 1 ]] && unshare --net true 2>/dev/null; then
  exec unshare --net env RBFM_IN_NETNS=1 bash "$0" "$@"
fi
if [[ "${RBFM_IN_NETNS:-}" == 1 ]]; then
  ip link set lo up
fi
PORT="${RBFM_RAY_PORT:-6380}"
export RAY_TMPDIR="${RAY_TMPDIR:-$(mktemp -d /tmp/rbfm-ray.XXXXXX)}"
stop() { "$BIN/ray" stop --force >/dev/null 2>&1 || true; }
trap stop EXIT
"$BIN/ray" start --head --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus=2 --num-gpus=0 \
  --include-dashboard=false --disable-usage-stats --temp-dir="$RAY_TMPDIR" >/dev/null
export RBFM_RAY_ADDRESS="127.0.0.1:$PORT"
echo "with-ray-cluster: a Ray cluster with 2 CPUs at $RBFM_RAY_ADDRESS" >&2
status=0
"$@" || status=$?
exit "$status"

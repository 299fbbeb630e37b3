#!/usr/bin/env bash
# Stop what cluster/local/start.sh started: cluster/local/stop.sh [DIR=./dask-local]
set -uo pipefail
dir=${1:-./dask-local}
[ -f "$dir/pids" ] || { echo "nothing started in $dir" >&2; exit 0; }
while read -r pid; do kill "$pid" 2>/dev/null; done <"$dir/pids"
sleep 1
while read -r pid; do kill -9 "$pid" 2>/dev/null; done <"$dir/pids"
rm -f "$dir/pids" "$dir/scheduler.json"
echo "stopped"

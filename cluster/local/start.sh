#!/usr/bin/env bash
# Start a Dask scheduler and N workers on 127.0.0.1, for `dlowrank run job.yaml --scheduler-file`.
#   cluster/local/start.sh [N_WORKERS=2] [MEMORY_LIMIT=4GB] [DIR=./dask-local]
# Everything listens on loopback only; the scheduler file is DIR/scheduler.json.
set -euo pipefail
n=${1:-2}
mem=${2:-4GB}
dir=${3:-./dask-local}
mkdir -p "$dir"
file="$dir/scheduler.json"
rm -f "$file"
nohup dask scheduler --host 127.0.0.1 --port 0 --no-dashboard --scheduler-file "$file" \
    >"$dir/scheduler.log" 2>&1 &
echo $! >"$dir/pids"
for _ in $(seq 1 100); do [ -s "$file" ] && break; sleep 0.1; done
[ -s "$file" ] || { echo "scheduler did not start; see $dir/scheduler.log" >&2; exit 1; }
for i in $(seq 1 "$n"); do
  nohup dask worker --scheduler-file "$file" --host 127.0.0.1 --nthreads 1 \
      --memory-limit "$mem" --no-dashboard --name "worker-$i" >"$dir/worker-$i.log" 2>&1 &
  echo $! >>"$dir/pids"
done
echo "scheduler file: $file ($n workers, $mem each)"

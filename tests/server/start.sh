# Sourced by the server test scripts (needs $SPUD). Makes $tmp, a scratch folder, and `pids`, the servers
# started; on exit the servers are killed and $tmp removed.
#
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# start NAME ARGS...: a server on a free port; sets URL_NAME and PID_NAME once /health answers 200.
start() {
  local name=$1; shift
  "$SPUD" serve --port 0 "$@" >"$tmp/$name.log" 2>&1 &
  local pid=$! port=""
  pids+=("$pid")
  for _ in $(seq 1 300); do
    port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/$name.log")
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$tmp/$name.log"; echo "server $name died"; exit 1; }
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$tmp/$name.log"; echo "server $name did not start"; exit 1; }
  for _ in $(seq 1 300); do
    node -e 'fetch(process.argv[1]).then((r) => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))' \
      "http://127.0.0.1:$port/health" && break
    sleep 0.1
  done
  printf -v "URL_$name" 'http://127.0.0.1:%s' "$port"
  printf -v "PID_$name" '%s' "$pid"
}

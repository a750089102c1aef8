#!/usr/bin/env bash
# Make sure a Redis answers on 127.0.0.1:${REDIS_PORT:-6379}; start Debian's redis-server when none does.
set -euo pipefail
PORT="${REDIS_PORT:-6379}"
ping() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" = "PONG" ]
  else
    python3 - "$PORT" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"PING\r\n"); ok = s.recv(16).startswith(b"+PONG"); s.close()
sys.exit(0 if ok else 1)
PY
  fi
}
if ping; then echo "redis: answering on 127.0.0.1:$PORT"; exit 0; fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis: no redis-server binary, installing Debian's redis-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
echo "redis: starting redis-server on 127.0.0.1:$PORT"
redis-server --daemonize yes --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no \
  --dir /tmp --logfile "/tmp/recsys-redis-$PORT.log"
for _ in $(seq 50); do ping && { echo "redis: up"; exit 0; }; sleep 0.1; done
echo "redis: failed to start, see /tmp/recsys-redis-$PORT.log" >&2; exit 1

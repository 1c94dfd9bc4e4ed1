#!/usr/bin/env bash
# Side-by-side benchmark: Berth vs CNCF Distribution 2.8 vs nginx (static files, the machine's
# limit). Each server is pinned to CPU 0, the load generator to CPU 1; everything listens on
# 127.0.0.1 only and stores its data under one temp dir (one filesystem).
#
#   bench/compare.sh                 # ROUNDS=3 full rounds
#   QUICK=1 bench/compare.sh         # small counts, one round: a fast end-to-end validation
#
# Environment:
#   ROUNDS=N        rounds (default 3; QUICK=1 defaults to 1); server order alternates per round
#   QUICK=1         small counts (--quick) for a fast validation
#   SCENARIOS=a,b   only these scenarios (berth-bench --list shows the names)
#   SERVERS="distribution berth nginx"   which servers to run
#   OUT=FILE        combined JSON (default target/bench/compare.json)
#   BENCH_ARGS=...  extra berth-bench arguments (e.g. "--duration 10")
#   BENCH_TMP=DIR   parent of the temp dir (default /tmp); all servers' data lives under it
#   DIST_ACCESSLOG=0  turn Distribution's per-request access log off (default: its default, on)
#   KEEP=1          keep the temp dir (logs, data) for inspection
#   BUILD=0         skip `cargo build --release` (use binaries already built)
#   BERTH_BIN=PATH, BENCH_BIN=PATH   use these binaries instead of target/release/*
#   BERTH_BASE_BIN=PATH  a second Berth (e.g. built from an earlier commit), run as the server
#                   "berth-base" (add it to SERVERS): before/after ratios in the same run
#
# PostgreSQL mode: add "berth-pg" (one Berth on PostgreSQL) and/or "berth-pg3" (three Berth
# instances on one PostgreSQL and one storage directory, behind nginx round-robin) to SERVERS.
# PostgreSQL (Debian's package) runs on the server's CPU too, so the server side is the registry
# and its database; each round gets a fresh database. berth-pg3's CPU and RSS columns are the
# front nginx's only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK="${QUICK:-0}"
if [[ "$QUICK" == 1 ]]; then ROUNDS="${ROUNDS:-1}"; else ROUNDS="${ROUNDS:-3}"; fi
SERVERS="${SERVERS:-distribution berth nginx}"
OUT="${OUT:-$ROOT/target/bench/compare.json}"
BENCH_ARGS="${BENCH_ARGS:-}"
DIST_ACCESSLOG="${DIST_ACCESSLOG:-1}"
HOST=127.0.0.1

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- prerequisites
need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v nginx >/dev/null || need+=(nginx-light)
command -v jq >/dev/null || need+=(jq)
command -v taskset >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
command -v ss >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  [[ $(id -u) == 0 ]] || die "need root to apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's docker-registry package ships a service; we never use it, but don't let it hold a port.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
  log "stopping the packaged docker-registry service"
  systemctl stop docker-registry || true
fi
if [[ " $SERVERS " == *" berth-pg"* ]] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  log "installing postgresql"
  [[ $(id -u) == 0 ]] || die "need root to apt-get install postgresql"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
DIST_BIN="$(command -v docker-registry)"
NGINX_BIN="$(command -v nginx)"

if (($(nproc) >= 2)); then SERVER_CPU=0; GEN_CPU=1; else SERVER_CPU=0; GEN_CPU=0; log "warning: one CPU only; server and generator share it"; fi

if [[ "${BUILD:-1}" == 1 ]]; then
  log "building berth and berth-bench (release)"
  cargo build --release -p berth -p berth-bench || die "cargo build failed"
fi
BERTH_BIN="${BERTH_BIN:-$ROOT/target/release/berth}"
BENCH_BIN="${BENCH_BIN:-$ROOT/target/release/berth-bench}"
[[ -x "$BERTH_BIN" && -x "$BENCH_BIN" ]] || die "missing $BERTH_BIN or $BENCH_BIN"

# ---------------------------------------------------------------- temp dir, cleanup
mkdir -p "${BENCH_TMP:-/tmp}"
BASE="$(mktemp -d "${BENCH_TMP:-/tmp}/berth-compare.XXXXXX")"
mkdir -p "$BASE/results"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ -n "${PG_DIR:-}" ]]; then pg_run pg_ctl -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true; fi
  if [[ "${KEEP:-0}" == 1 ]]; then log "kept $BASE"; else rm -rf "$BASE"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Below the ephemeral range (32768+), and not used by any socket in any state.
port_free() { ! ss -Htan "sport = :$1" | grep -q .; }
pick_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 12000))
    if port_free "$p"; then echo "$p"; return; fi
  done
  die "no free port"
}

wait_ready() { # PID URL NAME LOG
  for _ in $(seq 300); do
    kill -0 "$1" 2>/dev/null || { tail -n 20 "$4" >&2 || true; die "$3 exited during startup"; }
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$2" || true)" == 200 ]] && return 0
    sleep 0.1
  done
  die "$3 did not answer $2 within 30 s"
}

stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

SERVER_PID=""
SERVER_URL=""
SERVER_DIR=""

start_distribution() {
  local dir="$1" port
  port="$(pick_port)"
  mkdir -p "$dir/data"
  local accesslog=false
  [[ "$DIST_ACCESSLOG" == 0 ]] && accesslog=true
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: $accesslog
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $HOST:$port
  secret: berth-bench-local-only
EOF
  taskset -c "$SERVER_CPU" "$DIST_BIN" serve "$dir/config.yml" >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER_URL="http://$HOST:$port"
  wait_ready "$SERVER_PID" "$SERVER_URL/v2/" distribution "$dir/server.log"
}

start_berth() { # DIR [BINARY]
  local dir="$1" bin="${2:-$BERTH_BIN}" port
  port="$(pick_port)"
  mkdir -p "$dir/data"
  taskset -c "$SERVER_CPU" "$bin" serve --addr "$HOST:$port" --data "$dir/data" >"$dir/server.out" 2>"$dir/server.log" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER_URL="http://$HOST:$port"
  wait_ready "$SERVER_PID" "$SERVER_URL/v2/" berth "$dir/server.log"
  grep -q "berth listening on" "$dir/server.out" || log "warning: berth did not print 'berth listening on'"
}

# Writes DIR/nginx.conf: one worker in the foreground, its pid, logs and temporary files in DIR,
# and HTTP (the rest of its http block).
write_nginx_conf() { # DIR HTTP
  mkdir -p "$1/tmp"
  cat >"$1/nginx.conf" <<EOF
master_process off;
daemon off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
$2
}
EOF
}

# ---------------------------------------------------------------- PostgreSQL (berth-pg*)
PG_DIR=""
PG_PORT=""
pg_run() { # CMD ARGS: a PostgreSQL program, as the postgres user when running as root
  local bin
  bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)/$1"
  shift
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$bin" "$@"; else "$bin" "$@"; fi
}
start_postgres() { # once per run
  [[ -n "$PG_DIR" ]] && return 0
  PG_DIR="$BASE/postgres"
  PG_PORT="$(pick_port)"
  mkdir -p "$PG_DIR"
  if [[ $(id -u) == 0 ]]; then chown postgres "$PG_DIR"; chmod 755 "$BASE"; fi
  pg_run initdb -D "$PG_DIR/data" -U berth --auth=trust >"$PG_DIR/initdb.log" 2>&1 || die "initdb failed"
  pg_run pg_ctl -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
    -o "-c listen_addresses=$HOST -p $PG_PORT -k $PG_DIR -c max_connections=200 -c shared_buffers=256MB" \
    start >/dev/null || die "PostgreSQL did not start (see $PG_DIR/server.log)"
  local pid
  pid="$(head -n1 "$PG_DIR/data/postmaster.pid")"
  # The postmaster and the backends it forks run on the server's CPU.
  taskset -a -c -p "$SERVER_CPU" "$pid" >/dev/null
  log "PostgreSQL on $HOST:$PG_PORT (pid $pid)"
}
new_database() { # DIR: creates a fresh database named after the server's directory, prints it
  local db
  db="bench_$(basename "$1" | tr -c 'a-z0-9\n' '_')"
  pg_run createdb -h "$HOST" -p "$PG_PORT" -U berth "$db" || die "createdb failed"
  echo "$db"
}
berth_pg_config() { # DIR DB PORT: writes a config, prints its path
  cat >"$1/config-$3.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $1/data
  delete:
    enabled: true
http:
  addr: $HOST:$3
database:
  enabled: true
  host: $HOST
  port: $PG_PORT
  user: berth
  dbname: $2
  sslmode: disable
  pool:
    maxopen: 32
EOF
  echo "$1/config-$3.yml"
}

start_berth-pg() {
  local dir="$1" port db config
  start_postgres
  db="$(new_database "$dir")"
  port="$(pick_port)"
  mkdir -p "$dir/data"
  config="$(berth_pg_config "$dir" "$db" "$port")"
  taskset -c "$SERVER_CPU" "$BERTH_BIN" serve "$config" >"$dir/server.out" 2>"$dir/server.log" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER_URL="http://$HOST:$port"
  wait_ready "$SERVER_PID" "$SERVER_URL/v2/" berth-pg "$dir/server.log"
}

PG3_PIDS=()
start_berth-pg3() {
  local dir="$1" db port config upstreams="" i pid
  start_postgres
  db="$(new_database "$dir")"
  mkdir -p "$dir/data" "$dir/tmp"
  PG3_PIDS=()
  for i in 1 2 3; do
    port="$(pick_port)"
    config="$(berth_pg_config "$dir" "$db" "$port")"
    taskset -c "$SERVER_CPU" "$BERTH_BIN" serve "$config" >"$dir/server$i.out" 2>>"$dir/server.log" &
    pid=$!
    PIDS+=("$pid")
    PG3_PIDS+=("$pid")
    wait_ready "$pid" "http://$HOST:$port/v2/" "berth-pg3 instance $i" "$dir/server.log"
    upstreams+="    server $HOST:$port max_fails=1 fail_timeout=2s;"$'\n'
  done
  port="$(pick_port)"
  write_nginx_conf "$dir" "  upstream berth {
$upstreams    keepalive 64;
  }
  server {
    listen $HOST:$port;
    client_max_body_size 0;
    location / {
      proxy_pass http://berth;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$http_host;
      proxy_request_buffering off;
      proxy_buffering off;
    }
  }"
  taskset -c "$SERVER_CPU" "$NGINX_BIN" -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log" >>"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER_URL="http://$HOST:$port"
  wait_ready "$SERVER_PID" "$SERVER_URL/v2/" "berth-pg3 (nginx)" "$dir/server.log"
}

start_berth-base() {
  [[ -x "${BERTH_BASE_BIN:-}" ]] || die "server berth-base needs BERTH_BASE_BIN"
  start_berth "$1" "$BERTH_BASE_BIN"
}

start_nginx() {
  local dir="$1" port
  port="$(pick_port)"
  mkdir -p "$dir/tmp"
  write_nginx_conf "$dir" "  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  types { }
  default_type application/octet-stream;
  server {
    listen $HOST:$port;
    root $BASE/nginx-root;
    location = /v2/ { return 200 '{}'; }
    location ~ /manifests/ { default_type application/vnd.oci.image.manifest.v1+json; }
  }"
  taskset -c "$SERVER_CPU" "$NGINX_BIN" -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log" >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER_URL="http://$HOST:$port"
  wait_ready "$SERVER_PID" "$SERVER_URL/v2/" nginx "$dir/server.log"
}

start_server() { # NAME DIR
  SERVER_DIR="$2"
  mkdir -p "$2"
  "start_$1" "$2"
}

QUICK_ARG=()
[[ "$QUICK" == 1 ]] && QUICK_ARG=(--quick)
SCEN_ARG=()
[[ -n "${SCENARIOS:-}" ]] && SCEN_ARG=(--scenarios "$SCENARIOS")
read -r -a EXTRA <<<"$BENCH_ARGS"

# ---------------------------------------------------------------- nginx's static tree
if [[ " $SERVERS " == *" nginx "* ]]; then
  log "seeding the pull data set through a scratch Berth, laying it out for nginx"
  start_server berth "$BASE/seed-berth"
  taskset -c "$GEN_CPU" "$BENCH_BIN" --url "$SERVER_URL" --seed-only --seed-file "$BASE/seed.json" >&2
  repo="$(jq -r .repo "$BASE/seed.json")"
  tree="$BASE/nginx-root/v2/$repo"
  mkdir -p "$tree/blobs" "$tree/manifests"
  accept='application/vnd.oci.image.manifest.v1+json'
  jq -r '.blobs[].digest' "$BASE/seed.json" | while read -r d; do
    curl -sSf -o "$tree/blobs/$d" "$SERVER_URL/v2/$repo/blobs/$d"
    [[ "sha256:$(sha256sum "$tree/blobs/$d" | cut -d' ' -f1)" == "$d" ]] || die "seeded blob $d has the wrong digest"
  done
  jq -r '.manifests[].digest' "$BASE/seed.json" | while read -r d; do
    curl -sSf -H "Accept: $accept" -o "$tree/manifests/$d" "$SERVER_URL/v2/$repo/manifests/$d"
    [[ "sha256:$(sha256sum "$tree/manifests/$d" | cut -d' ' -f1)" == "$d" ]] || die "seeded manifest $d has the wrong digest"
  done
  jq -r '.tags | to_entries[] | "\(.key) \(.value)"' "$BASE/seed.json" | while read -r tag d; do
    cp "$tree/manifests/$d" "$tree/manifests/$tag"
  done
  stop_pid "$SERVER_PID"
  rm -rf "$BASE/seed-berth/data"
  log "nginx tree: $(du -sh "$BASE/nginx-root" | cut -f1)"
fi

# ---------------------------------------------------------------- rounds
inputs=()
problems=()
read -r -a order <<<"$SERVERS"
for ((round = 1; round <= ROUNDS; round++)); do
  if ((round % 2 == 0)); then
    rev=()
    for ((i = ${#order[@]} - 1; i >= 0; i--)); do rev+=("${order[i]}"); done
    servers=("${rev[@]}")
  else
    servers=("${order[@]}")
  fi
  for name in "${servers[@]}"; do
    dir="$BASE/r$round-$name"
    log "round $round/$ROUNDS: $name"
    start_server "$name" "$dir"
    ro=()
    [[ "$name" == nginx ]] && ro=(--read-only)
    json="$BASE/results/r$round-$name.json"
    rc=0
    taskset -c "$GEN_CPU" "$BENCH_BIN" --url "$SERVER_URL" --server-pid "$SERVER_PID" --label "$name" \
      --json "$json" "${QUICK_ARG[@]}" "${SCEN_ARG[@]}" "${ro[@]}" "${EXTRA[@]}" || rc=$?
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      problems+=("round $round: $name CRASHED (see its log)")
      tail -n 30 "$dir/server.log" >&2 || true
    fi
    case $rc in
      0) ;;
      2) problems+=("round $round: $name: some scenarios failed (see $json)") ;;
      3) problems+=("round $round: $name: DIGEST MISMATCH (generator aborted)") ;;
      *) problems+=("round $round: $name: generator exited $rc") ;;
    esac
    [[ -f "$json" ]] && inputs+=("$name=$json")
    stop_pid "$SERVER_PID"
    if [[ "$name" == berth-pg3 ]]; then
      for pid in "${PG3_PIDS[@]}"; do stop_pid "$pid"; done
    fi
    # Server data is large (blobs, 10k repos); logs stay until exit.
    rm -rf "$dir/data"
  done
done

# ---------------------------------------------------------------- report
mkdir -p "$(dirname "$OUT")"
echo
echo "Berth vs Distribution $("$DIST_BIN" --version 2>/dev/null | awk '{print $3}') vs nginx $("$NGINX_BIN" -v 2>&1 | sed 's/.*nginx\///') — $ROUNDS round(s)$([[ "$QUICK" == 1 ]] && echo ', QUICK')"
echo "server on CPU $SERVER_CPU, generator on CPU $GEN_CPU; storage: $(df --output=source,fstype "$BASE" | tail -n1 | tr -s ' ')"
echo
if ((${#inputs[@]})); then
  "$BENCH_BIN" report --base berth --out "$OUT" "${inputs[@]}"
  log "combined JSON: $OUT"
fi
if ((${#problems[@]})); then
  echo
  echo "PROBLEMS:"
  printf '  %s\n' "${problems[@]}"
  if [[ "${KEEP:-0}" != 1 ]]; then
    for f in "$BASE"/r*/server.log; do
      [[ -s "$f" ]] && { echo "--- last lines of $f"; grep -Eiv 'level=info|"GET|"HEAD|"PUT|"POST|"PATCH' "$f" | tail -n 10; } || true
    done
  fi
  exit 1
fi

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
#
# S3 mode: "berth-s3" (Berth with blobs on S3, pulls redirected to presigned URLs, the default),
# "berth-s3-proxy" (the same with storage.redirect.disable: Berth streams every byte),
# "distribution-s3" (Distribution 2.8's S3 driver, its defaults: redirect on, 10 MiB parts) and
# "s3-limit" (the read scenarios served by the object store alone: the machine's limit). The
# object store is one Garage node (GARAGE_BIN, else garage on PATH, else ~/.cargo/bin/garage)
# started once per run on the server's CPU, its data under the temp dir; each round and server
# gets a fresh bucket. Metadata stays local (Berth: sqlite.path in its directory). The server
# columns count the registry only; Garage's CPU is in the "store CPU-s" columns. With s3-limit
# the script also times plain S3 uploads of 256 MiB (curl, aws s3 cp) as the write limit.
#   S3_WRITE=0      skip those timed uploads
#   REPORT_BASE=NAME  the server the others are compared with (default: berth if run, else
#                   berth-s3 if run, else the first berth* server)
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
if [[ -z "${REPORT_BASE:-}" ]]; then
  REPORT_BASE=berth
  if [[ " $SERVERS " == *" berth-s3 "* && " $SERVERS " != *" berth "* ]]; then
    REPORT_BASE=berth-s3
  elif [[ " $SERVERS " != *" berth "* ]]; then
    for s in $SERVERS; do [[ "$s" == berth* ]] && { REPORT_BASE="$s"; break; }; done
  fi
fi

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
if [[ " $SERVERS " == *"-s3"* || " $SERVERS " == *" s3-limit "* ]]; then
  S3_MODE=1
  GARAGE_BIN="${GARAGE_BIN:-$(command -v garage || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage")}"
  [[ -x "$GARAGE_BIN" ]] || die "S3 mode needs garage (GARAGE_BIN, PATH or ~/.cargo/bin): cargo install garage --locked"
else
  S3_MODE=0
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

# Variables that would override what a program is told explicitly: AWS_* (AWS_CA_BUNDLE, for
# one, makes Distribution's AWS SDK refuse to start) and GARAGE_* (read by Garage's CLI).
CLEAN_ENV=(env)
for v in $(compgen -e); do
  if [[ "$v" == AWS_* || "$v" == GARAGE_* ]]; then CLEAN_ENV+=(-u "$v"); fi
done

start_distribution() {
  mkdir -p "$1/data"
  run_distribution "$1" "  filesystem:
    rootdirectory: $1/data"
}

run_distribution() { # DIR STORAGE: Distribution with this storage driver section
  local dir="$1" port
  port="$(pick_port)"
  local accesslog=false
  [[ "$DIST_ACCESSLOG" == 0 ]] && accesslog=true
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: $accesslog
storage:
$2
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
  taskset -c "$SERVER_CPU" "${CLEAN_ENV[@]}" "$DIST_BIN" serve "$dir/config.yml" >"$dir/server.log" 2>&1 &
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

# ---------------------------------------------------------------- Garage (S3 mode)
GARAGE_DIR=""
GARAGE_PID=""
GARAGE_S3=""       # the S3 API, http://127.0.0.1:PORT
GARAGE_WEB_PORT="" # the website endpoint (s3-limit)
GARAGE_KEY=""
GARAGE_SECRET=""
garage_cli() {
  "${CLEAN_ENV[@]}" RUST_LOG=garage=warn NO_COLOR=1 "$GARAGE_BIN" -c "$GARAGE_DIR/garage.toml" "$@"
}
random_hex() { od -An -tx1 -N "$1" /dev/urandom | tr -d ' \n'; }
start_garage() { # once per run: one node (replication factor 1), on the server's CPU
  [[ -n "$GARAGE_PID" ]] && return 0
  GARAGE_DIR="$BASE/garage"
  mkdir -p "$GARAGE_DIR"
  local ports=() p id
  while ((${#ports[@]} < 4)); do
    p="$(pick_port)"
    [[ " ${ports[*]} " == *" $p "* ]] || ports+=("$p")
  done
  GARAGE_S3="http://$HOST:${ports[1]}"
  GARAGE_WEB_PORT="${ports[2]}"
  # No fsync, as in the tests: the machine is not crashed during a run. The website endpoint
  # serves a bucket by the Host header: a bucket whose global alias is the whole host name
  # ("localhost") is served for "Host: localhost:PORT" whatever root_domain says.
  cat >"$GARAGE_DIR/garage.toml" <<EOF
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "$HOST:${ports[0]}"
rpc_public_addr = "$HOST:${ports[0]}"
rpc_secret = "$(random_hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "$HOST:${ports[1]}"

[s3_web]
bind_addr = "$HOST:${ports[2]}"
root_domain = ".web.garage.localhost"
index = "index.html"

[admin]
api_bind_addr = "$HOST:${ports[3]}"
EOF
  taskset -c "$SERVER_CPU" "${CLEAN_ENV[@]}" RUST_LOG=garage=info NO_COLOR=1 \
    "$GARAGE_BIN" -c "$GARAGE_DIR/garage.toml" server >"$GARAGE_DIR/server.log" 2>&1 &
  GARAGE_PID=$!
  PIDS+=("$GARAGE_PID")
  # Without credentials the S3 API answers 403: any status means it is up.
  for _ in $(seq 300); do
    kill -0 "$GARAGE_PID" 2>/dev/null || { tail -n 20 "$GARAGE_DIR/server.log" >&2; die "Garage exited during startup"; }
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$GARAGE_S3/" || true)" != 000 ]] && break
    sleep 0.1
  done
  id="$(garage_cli node id -q)" || die "garage node id failed"
  garage_cli layout assign -z dc1 -c 100G "${id%%@*}" >/dev/null || die "garage layout assign failed"
  garage_cli layout apply --version 1 >/dev/null || die "garage layout apply failed"
  for _ in $(seq 300); do
    garage_cli health 2>/dev/null | grep -Eq 'Cluster health: +HEALTHY' && break
    sleep 0.2
  done
  garage_cli health 2>/dev/null | grep -Eq 'Cluster health: +HEALTHY' || die "Garage is not healthy (see $GARAGE_DIR/server.log)"
  GARAGE_KEY="GK$(random_hex 12)"
  GARAGE_SECRET="$(random_hex 32)"
  garage_cli key import --yes -n bench "$GARAGE_KEY" "$GARAGE_SECRET" >/dev/null || die "garage key import failed"
  log "Garage $("$GARAGE_BIN" --version 2>/dev/null | awk '{print $2}') on $GARAGE_S3 (pid $GARAGE_PID), website endpoint on port $GARAGE_WEB_PORT"
}
new_bucket() { # NAME: a fresh bucket, allowed read/write/owner to the key
  garage_cli bucket create "$1" >/dev/null || die "garage bucket create $1 failed"
  garage_cli bucket allow --read --write --owner "$1" --key "$GARAGE_KEY" >/dev/null ||
    die "garage bucket allow $1 failed"
}
bucket_usage() { # NAME: "N objects, SIZE"
  garage_cli bucket info "$1" 2>/dev/null |
    awk '/^Objects:/ {o = $2} /^Size:/ {sub(/^Size: */, ""); s = $0} END {print o " objects, " s}'
}
bucket_objects() { bucket_usage "$1" | awk '{print $1 + 0}'; }

# A plain S3 client: aws on PATH, else awscli installed with pip into a venv in the temp dir.
AWS_CLI=()
s3_client() {
  ((${#AWS_CLI[@]})) && return 0
  local aws
  aws="$(command -v aws || true)"
  if [[ -z "$aws" ]]; then
    log "installing awscli into $BASE/venv"
    python3 -m venv "$BASE/venv" >/dev/null || die "python3 -m venv failed"
    "$BASE/venv/bin/pip" install -q awscli >&2 || die "pip install awscli failed"
    aws="$BASE/venv/bin/aws"
  fi
  mkdir -p "$BASE/aws"
  : >"$BASE/aws/config"
  : >"$BASE/aws/credentials"
  AWS_CLI=("${CLEAN_ENV[@]}" AWS_ACCESS_KEY_ID="$GARAGE_KEY" AWS_SECRET_ACCESS_KEY="$GARAGE_SECRET"
    AWS_DEFAULT_REGION=garage AWS_CONFIG_FILE="$BASE/aws/config"
    AWS_SHARED_CREDENTIALS_FILE="$BASE/aws/credentials" "$aws" --endpoint-url "$GARAGE_S3")
}

berth_s3_config() { # DIR BUCKET PORT DISABLE-REDIRECT: writes DIR/config.yml
  cat >"$1/config.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  s3:
    accesskey: "$GARAGE_KEY"
    secretkey: "$GARAGE_SECRET"
    region: garage
    regionendpoint: $GARAGE_S3
    bucket: $2
    rootdirectory: /berth
    chunksize: 10485760
  delete:
    enabled: true
  redirect:
    disable: $4
http:
  addr: $HOST:$3
sqlite:
  path: $1/meta/meta.db
EOF
}
start_berth_s3() { # DIR DISABLE-REDIRECT
  local dir="$1" port bucket
  start_garage
  bucket="$(basename "$dir")"
  new_bucket "$bucket"
  port="$(pick_port)"
  mkdir -p "$dir/meta"
  berth_s3_config "$dir" "$bucket" "$port" "$2"
  taskset -c "$SERVER_CPU" "${CLEAN_ENV[@]}" "$BERTH_BIN" serve "$dir/config.yml" >"$dir/server.out" 2>"$dir/server.log" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER_URL="http://$HOST:$port"
  wait_ready "$SERVER_PID" "$SERVER_URL/v2/" "$(basename "$dir")" "$dir/server.log"
}
start_berth-s3() { start_berth_s3 "$1" false; }
start_berth-s3-proxy() { start_berth_s3 "$1" true; }

start_distribution-s3() { # Distribution's S3 driver with its defaults (redirect on, 10 MiB parts)
  local bucket
  start_garage
  bucket="$(basename "$1")"
  new_bucket "$bucket"
  run_distribution "$1" "  s3:
    accesskey: \"$GARAGE_KEY\"
    secretkey: \"$GARAGE_SECRET\"
    region: garage
    regionendpoint: $GARAGE_S3
    bucket: $bucket
    rootdirectory: /registry
    secure: false
    v4auth: true"
}

start_s3-limit() { # Garage's website endpoint, serving the tree uploaded after seeding
  SERVER_PID="$GARAGE_PID"
  SERVER_URL="http://localhost:$GARAGE_WEB_PORT"
  wait_ready "$SERVER_PID" "$SERVER_URL/v2/" "s3-limit (Garage's website endpoint)" "$GARAGE_DIR/server.log"
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
if [[ " $SERVERS " == *" nginx "* || " $SERVERS " == *" s3-limit "* ]]; then
  log "seeding the pull data set through a scratch Berth, laying it out as static files"
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
  if [[ " $SERVERS " == *" s3-limit "* ]]; then
    # The same tree as objects of a bucket served by Garage's website endpoint, uploaded with a
    # plain S3 client; manifests with the OCI media type, as nginx serves them.
    start_garage
    s3_client
    log "uploading the tree into Garage (bucket localhost, website access)"
    new_bucket localhost
    garage_cli bucket website --allow localhost >/dev/null || die "garage bucket website failed"
    "${AWS_CLI[@]}" s3 cp --only-show-errors --recursive --content-type application/octet-stream \
      "$tree/blobs" "s3://localhost/v2/$repo/blobs/" || die "uploading blobs to Garage failed"
    "${AWS_CLI[@]}" s3 cp --only-show-errors --recursive --content-type "$accept" \
      "$tree/manifests" "s3://localhost/v2/$repo/manifests/" || die "uploading manifests to Garage failed"
    printf '{}' >"$BASE/v2-index.json"
    "${AWS_CLI[@]}" s3 cp --only-show-errors --content-type application/json \
      "$BASE/v2-index.json" "s3://localhost/v2/index.html" || die "uploading /v2/ to Garage failed"
    web="http://$HOST:$GARAGE_WEB_PORT"
    for d in $(jq -r '.blobs[].digest, .manifests[].digest' "$BASE/seed.json"); do
      kind=blobs
      [[ -f "$tree/manifests/$d" ]] && kind=manifests
      got="$(curl -sSf -H "Host: localhost:$GARAGE_WEB_PORT" "$web/v2/$repo/$kind/$d" | sha256sum | cut -d' ' -f1)"
      [[ "sha256:$got" == "$d" ]] || die "Garage serves $kind/$d with the wrong digest"
    done
    log "Garage bucket localhost: $(bucket_usage localhost)"
  fi
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
    [[ "$name" == nginx || "$name" == s3-limit ]] && ro=(--read-only)
    store=()
    [[ "$name" == *-s3 || "$name" == *-s3-* ]] && store=(--store-pid "$GARAGE_PID")
    json="$BASE/results/r$round-$name.json"
    rc=0
    taskset -c "$GEN_CPU" "$BENCH_BIN" --url "$SERVER_URL" --server-pid "$SERVER_PID" --label "$name" \
      --json "$json" "${QUICK_ARG[@]}" "${SCEN_ARG[@]}" "${ro[@]}" "${store[@]}" "${EXTRA[@]}" || rc=$?
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
    if [[ "$name" == s3-limit ]]; then
      : # Garage itself: it runs to the end
    else
      stop_pid "$SERVER_PID"
    fi
    if ((${#store[@]})); then
      # Proof that the blobs went to the object store: the round's bucket holds them.
      usage="$(bucket_usage "$(basename "$dir")")"
      log "bucket $(basename "$dir"): $usage"
      if [[ -n "$(jq -r '.results[] | select(.ok and (.scenario | startswith("push_"))) | .scenario' "$json" 2>/dev/null)" ]] &&
        (($(bucket_objects "$(basename "$dir")") == 0)); then
        problems+=("round $round: $name pushed blobs but its bucket is empty")
      fi
    fi
    if [[ "$name" == berth-pg3 ]]; then
      for pid in "${PG3_PIDS[@]}"; do stop_pid "$pid"; done
    fi
    # Server data is large (blobs, 10k repos); logs stay until exit.
    rm -rf "$dir/data" "$dir/meta"
  done
done

# ---------------------------------------------------------------- S3 write limit
# What the object store takes from a plain S3 client: 256 MiB objects, one at a time, from the
# generator's CPU, as curl's single PUT (one stream, as a monolithic push sends it) and as
# `aws s3 cp` (its defaults: multipart, 8 MiB parts, 10 in parallel).
S3_WRITE_REPORT=""
proc_cpu() { awk -v t="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); print ($12 + $13) / t}' "/proc/$1/stat"; }
if [[ " $SERVERS " == *" s3-limit "* && "${S3_WRITE:-1}" != 0 ]]; then
  s3_client
  new_bucket s3-write
  n=4
  [[ "$QUICK" == 1 ]] && n=1
  f="$BASE/s3-write.bin"
  head -c $((256 << 20)) /dev/urandom >"$f"
  for how in curl aws; do
    rates=()
    c0="$(proc_cpu "$GARAGE_PID")"
    for ((i = 1; i <= n; i++)); do
      t0="$(date +%s.%N)"
      if [[ "$how" == curl ]]; then
        taskset -c "$GEN_CPU" curl -sSf -o /dev/null -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
          --aws-sigv4 "aws:amz:garage:s3" --user "$GARAGE_KEY:$GARAGE_SECRET" \
          -T "$f" "$GARAGE_S3/s3-write/$how-$i" || die "curl PUT to Garage failed"
      else
        taskset -c "$GEN_CPU" "${AWS_CLI[@]}" s3 cp --only-show-errors "$f" "s3://s3-write/$how-$i" ||
          die "aws s3 cp to Garage failed"
      fi
      t1="$(date +%s.%N)"
      rates+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", 268435456 / 1e6 / (b - a)}')")
    done
    c1="$(proc_cpu "$GARAGE_PID")"
    med="$(printf '%s\n' "${rates[@]}" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}')"
    what="curl, one PUT of 256 MiB"
    [[ "$how" == aws ]] && what="aws s3 cp, multipart (8 MiB x 10)"
    S3_WRITE_REPORT+="$(printf '  %-36s %7s MB/s (median of %d: %s), Garage %.2f CPU-s/GiB' \
      "$what" "$med" "$n" "${rates[*]}" "$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN {print (b - a) * 4 / n}')")"$'\n'
  done
  rm -f "$f"
fi

# ---------------------------------------------------------------- report
mkdir -p "$(dirname "$OUT")"
echo
echo "Berth vs Distribution $("$DIST_BIN" --version 2>/dev/null | awk '{print $3}') vs nginx $("$NGINX_BIN" -v 2>&1 | sed 's/.*nginx\///') — $ROUNDS round(s)$([[ "$QUICK" == 1 ]] && echo ', QUICK')"
echo "server on CPU $SERVER_CPU, generator on CPU $GEN_CPU; storage: $(df --output=source,fstype "$BASE" | tail -n1 | tr -s ' ')"
if [[ "$S3_MODE" == 1 ]]; then
  echo "object store: Garage $("$GARAGE_BIN" --version 2>/dev/null | awk '{print $2}') (one node, on CPU $SERVER_CPU beside the server; its CPU is in the store columns)"
fi
echo
if ((${#inputs[@]})); then
  "$BENCH_BIN" report --base "$REPORT_BASE" --out "$OUT" "${inputs[@]}"
  log "combined JSON: $OUT"
fi
if [[ -n "$S3_WRITE_REPORT" ]]; then
  echo
  echo "S3 write limit: 256 MiB objects written to Garage by a plain S3 client on the generator's CPU"
  printf '%s' "$S3_WRITE_REPORT"
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

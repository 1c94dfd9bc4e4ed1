# Shared by compare.sh and gc-scale.sh (sourced, not run): logging, prerequisites, the build,
# the temp dir and its cleanup, ports, and how each server is started and stopped. Everything
# is a function or a variable default; the sourcing script sets ROOT, SERVERS, HOST and
# DIST_ACCESSLOG first and calls bench_prereqs, bench_build and bench_tmpdir in that order.

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- prerequisites
# Installs with apt-get the package of each missing command: install_missing COMMAND:PACKAGE ...
install_missing() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  if ((${#need[@]})); then
    log "installing ${need[*]}"
    [[ $(id -u) == 0 ]] || die "need root to apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

bench_prereqs() {
  install_missing docker-registry:docker-registry nginx:nginx-light jq:jq taskset:util-linux \
    curl:curl ss:iproute2
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
}

# Builds berth and berth-bench (unless BUILD=0), into CARGO_TARGET_DIR when it is set, and
# sets BERTH_BIN and BENCH_BIN (unless given).
bench_build() {
  local target="${CARGO_TARGET_DIR:-$ROOT/target}"
  if [[ "${BUILD:-1}" == 1 ]]; then
    log "building berth and berth-bench (release)"
    cargo build --release -p berth -p berth-bench || die "cargo build failed"
  fi
  BERTH_BIN="${BERTH_BIN:-$target/release/berth}"
  BENCH_BIN="${BENCH_BIN:-$target/release/berth-bench}"
  [[ -x "$BERTH_BIN" && -x "$BENCH_BIN" ]] || die "missing $BERTH_BIN or $BENCH_BIN"
}

# ---------------------------------------------------------------- temp dir, cleanup
bench_tmpdir() { # PREFIX: makes BASE, removed (with every process in PIDS) on exit
  mkdir -p "${BENCH_TMP:-/tmp}"
  BASE="$(mktemp -d "${BENCH_TMP:-/tmp}/$1.XXXXXX")"
  mkdir -p "$BASE/results"
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}
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

# Polls URL until it answers 200 (every 10 ms, for up to 30 s); READY_S is then the seconds
# from the call (made right after the server was launched) to that answer.
READY_S=""
wait_ready() { # PID URL NAME LOG
  local t0 now
  t0="$(date +%s%N)"
  while :; do
    kill -0 "$1" 2>/dev/null || { tail -n 20 "$4" >&2 || true; die "$3 exited during startup"; }
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' "$2" || true)" == 200 ]]; then
      now="$(date +%s%N)"
      READY_S="$(awk -v a="$t0" -v b="$now" 'BEGIN {printf "%.3f", (b - a) / 1e9}')"
      return 0
    fi
    now="$(date +%s%N)"
    ((now - t0 < 30000000000)) || break
    sleep 0.01
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

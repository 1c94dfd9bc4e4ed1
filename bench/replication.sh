#!/usr/bin/env bash
# Replication throughput, Berth to Berth on loopback, beside `skopeo sync` of the same images.
# The same set-up as compare.sh and gc-scale.sh (bench/lib.sh): every registry pinned to CPU 0,
# the generator and skopeo to CPU 1, 127.0.0.1 only, one temp dir. Nothing here asserts a
# timing: it measures and prints.
#
#   bench/replication.sh            # 200 images (4 with a 64 MiB layer), ~1 min on 2 cores
#   QUICK=1 bench/replication.sh    # 20 images, 1 MiB layers: an end-to-end check (~10 s)
#
# What it does:
#   1. Picks a port for B but does not start B. Starts A with a push rule to B
#      (`replication.rules: to-b`, `bench-repl/**`) and a debug listener with /metrics.
#   2. `berth-bench --scenarios repl_seed` pushes the fixed image set into A
#      (bench-repl/app-NNN:v1, see bench/src/repl.rs), then waits until
#      `berth replication status` shows every image queued (B is down: nothing is copied).
#   3. Starts B (`berth serve --addr --data`, as lib.sh's start_berth) and polls A's status every
#      100 ms until it shows `0 queued`. Times: B ready -> 0 queued (total, which includes the
#      wait for the worker's next retry: it backs off up to 30 s while B is down), and A's first
#      request on B (B's access log) -> 0 queued (copy). Every manifest on B is compared with
#      A's (GET with the manifest Accept headers: Docker-Content-Digest and the body's sha256),
#      and the blobs of two images are pulled from B and hashed.
#   4. Starts a fresh Berth C and runs one `skopeo sync --src yaml` call listing every
#      repository (A -> C), timed from launch to exit, with --preserve-digests when this skopeo
#      has it; then C is checked the same way.
#   5. Prints a table (MB/s, images/s, CPU) and writes OUT.
#
# MB/s counts what a copy into an empty registry has to move: every distinct blob once (the
# shared base layers are mounted, not sent again, by both copiers) and every manifest;
# MB = 10^6 bytes.
#
# Environment:
#   QUICK=1          20 images, 1 MiB layers (berth-bench --quick)
#   REPL_ARGS=...    berth-bench flags for repl_seed: --repl-images N, --repl-big N,
#                    --repl-big-mib N, --seed-concurrency N
#   SKOPEO_PRESERVE=auto|0  pass --preserve-digests (auto: when skopeo has it) or not (0: to
#                    see what skopeo does without it)
#   SKOPEO_ARGS=...  extra `skopeo sync` flags
#   COPY_TIMEOUT=S   give up on a copy after S seconds (default 1800; quick 300)
#   OUT=FILE         JSON (default $CARGO_TARGET_DIR or target/, then bench/replication.json)
#   BENCH_ARGS, BENCH_TMP, KEEP, BUILD, BERTH_BIN, BENCH_BIN, CARGO_TARGET_DIR: as in compare.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK="${QUICK:-0}"
OUT="${OUT:-${CARGO_TARGET_DIR:-$ROOT/target}/bench/replication.json}"
BENCH_ARGS="${BENCH_ARGS:-}"
SKOPEO_PRESERVE="${SKOPEO_PRESERVE:-auto}"
if [[ "$QUICK" == 1 ]]; then COPY_TIMEOUT="${COPY_TIMEOUT:-300}"; else COPY_TIMEOUT="${COPY_TIMEOUT:-1800}"; fi
SERVERS=berth
DIST_ACCESSLOG=1
HOST=127.0.0.1

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# What this script needs (lib.sh's bench_prereqs also installs Distribution and nginx).
repl_prereqs() {
  install_missing skopeo:skopeo jq:jq taskset:util-linux curl:curl ss:iproute2 \
    column:bsdextrautils
  if (($(nproc) >= 2)); then SERVER_CPU=0; GEN_CPU=1; else SERVER_CPU=0; GEN_CPU=0; log "warning: one CPU only; servers and copier share it"; fi
}

repl_prereqs
bench_build
bench_tmpdir berth-replication

QUICK_ARG=()
[[ "$QUICK" == 1 ]] && QUICK_ARG=(--quick)
read -r -a EXTRA <<<"$BENCH_ARGS"
read -r -a REPL_EXTRA <<<"${REPL_ARGS:-}"
read -r -a SKOPEO_EXTRA <<<"${SKOPEO_ARGS:-}"
problems=()

now_ns() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b - a) / 1e9}'; }
# user+system CPU seconds of a running process (0 if it is gone)
cpu_s() {
  awk -v tck="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / tck}' "/proc/$1/stat" 2>/dev/null || echo 0
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# N distinct free ports (a port picked for a server not started yet stays free)
pick_ports() {
  local ports=() p
  while ((${#ports[@]} < $1)); do
    p="$(pick_port)"
    [[ " ${ports[*]} " == *" $p "* ]] || ports+=("$p")
  done
  echo "${ports[@]}"
}

start_berth_at() { # DIR PORT: a plain Berth on a port chosen before (lib.sh's start_berth picks its own)
  local dir="$1" port="$2"
  mkdir -p "$dir/data"
  taskset -c "$SERVER_CPU" "$BERTH_BIN" serve --addr "$HOST:$port" --data "$dir/data" >"$dir/server.out" 2>"$dir/server.log" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER_URL="http://$HOST:$port"
  wait_ready "$SERVER_PID" "$SERVER_URL/v2/" "$(basename "$dir")" "$dir/server.log"
}

# The first and last request in a Berth access log that did not come from curl (the readiness
# probe, the checks), how many there were and the seconds spent in their handlers, added up:
# "FIRST_NS LAST_NS COUNT HANDLER_S", or empty.
copier_window() { # LOG
  local lines first last
  lines="$(grep 'msg="request"' "$1" | grep -v 'user_agent="curl/' || true)"
  [[ -n "$lines" ]] || return 0
  first="$(head -n1 <<<"$lines" | sed -E 's/^time="([^"]+)".*/\1/')"
  last="$(tail -n1 <<<"$lines" | sed -E 's/^time="([^"]+)".*/\1/')"
  echo "$(date -d "$first" +%s%N) $(date -d "$last" +%s%N) $(wc -l <<<"$lines")" \
    "$(sed -E 's/.* duration_ms="?([0-9.e-]+)"?.*/\1/' <<<"$lines" | awk '{s += $1} END {printf "%.3f", s / 1000}')"
}

ACCEPT=(-H "Accept: application/vnd.oci.image.manifest.v1+json"
  -H "Accept: application/vnd.docker.distribution.manifest.v2+json"
  -H "Accept: application/vnd.oci.image.index.v1+json"
  -H "Accept: application/vnd.docker.distribution.manifest.list.v2+json")
# "HEADER-DIGEST BODY-SHA256 MEDIA-TYPE" of REPO:v1 at URL ("- - -" if it is not there)
manifest_of() { # URL REPO
  local tmp="$BASE/m.$$" code hd body mt
  code="$(curl -s -o "$tmp.body" -D "$tmp.hdr" -w '%{http_code}' "${ACCEPT[@]}" "$1/v2/$2/manifests/v1" || true)"
  if [[ "$code" != 200 ]]; then echo "- - -"; return 0; fi
  hd="$(tr -d '\r' <"$tmp.hdr" | awk 'tolower($1) == "docker-content-digest:" {print $2}')"
  mt="$(tr -d '\r' <"$tmp.hdr" | awk 'tolower($1) == "content-type:" {print $2}')"
  body="sha256:$(sha256sum <"$tmp.body" | cut -d' ' -f1)"
  echo "${hd:--} $body ${mt:--}"
}

# Compares every seeded image's manifest at URL with A's and with the seeded digest, and pulls
# the blobs of two images (the first, the last) from URL, each hashed. Sets V_EQUAL, V_DIFFER,
# V_MISSING, V_BLOBS_OK, V_BLOBS_BAD, V_MEDIA (media types seen at URL) and V_FIRST_DIFF.
verify_copy() { # NAME URL
  local name="$1" url="$2" repo want a d
  V_EQUAL=0 V_DIFFER=0 V_MISSING=0 V_BLOBS_OK=0 V_BLOBS_BAD=0 V_FIRST_DIFF="" V_MEDIA=""
  local media=()
  while read -r repo want; do
    read -r -a a <<<"$(manifest_of "$A_URL" "$repo")"
    read -r -a d <<<"$(manifest_of "$url" "$repo")"
    if [[ "${d[0]}" == - ]]; then
      V_MISSING=$((V_MISSING + 1))
      [[ -n "$V_FIRST_DIFF" ]] || V_FIRST_DIFF="$repo: not on $name"
    elif [[ "${a[0]}" == "$want" && "${a[1]}" == "$want" && "${d[0]}" == "$want" && "${d[1]}" == "$want" ]]; then
      V_EQUAL=$((V_EQUAL + 1))
    else
      V_DIFFER=$((V_DIFFER + 1))
      [[ -n "$V_FIRST_DIFF" ]] || V_FIRST_DIFF="$repo: seeded $want, A ${a[0]} (body ${a[1]}), $name ${d[0]} (body ${d[1]}, ${d[2]})"
    fi
    [[ " ${media[*]} " == *" ${d[2]} "* ]] || media+=("${d[2]}")
  done < <(jq -r '.results[0].extra.manifests[] | "\(.repo) \(.digest)"' "$SEED_JSON")
  V_MEDIA="${media[*]}"
  local r digest got
  for r in "$(jq -r '.results[0].extra.manifests[0].repo' "$SEED_JSON")" \
    "$(jq -r '.results[0].extra.manifests[-1].repo' "$SEED_JSON")"; do
    curl -s "${ACCEPT[@]}" "$url/v2/$r/manifests/v1" -o "$BASE/m.check" || true
    for digest in $(jq -r '.config.digest, .layers[].digest' "$BASE/m.check" 2>/dev/null); do
      got="sha256:$(curl -s "$url/v2/$r/blobs/$digest" | sha256sum | cut -d' ' -f1)"
      if [[ "$got" == "$digest" ]]; then V_BLOBS_OK=$((V_BLOBS_OK + 1)); else V_BLOBS_BAD=$((V_BLOBS_BAD + 1)); fi
    done
  done
  log "  $name: $V_EQUAL manifests equal to A's, $V_DIFFER differ, $V_MISSING missing; $V_BLOBS_OK blobs pulled and hashed ok, $V_BLOBS_BAD bad; manifest types: $V_MEDIA"
  [[ -z "$V_FIRST_DIFF" ]] || log "  first difference: $V_FIRST_DIFF"
  ((V_DIFFER + V_MISSING + V_BLOBS_BAD == 0)) || problems+=("$name: $V_DIFFER manifests differ from A's, $V_MISSING missing, $V_BLOBS_BAD blobs bad ($V_FIRST_DIFF)")
}

started="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
load_start="$(loadavg)"
read -r PORT_A PORT_DEBUG PORT_B PORT_C <<<"$(pick_ports 4)"
A_DIR="$BASE/a"
B_DIR="$BASE/b"
C_DIR="$BASE/c"
mkdir -p "$A_DIR/data" "$B_DIR" "$C_DIR"

# ---------------------------------------------------------------- A, with the rule to B
cat >"$A_DIR/config.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $A_DIR/data
http:
  addr: $HOST:$PORT_A
  debug:
    addr: $HOST:$PORT_DEBUG
    prometheus:
      enabled: true
      path: /metrics
replication:
  registries:
    - name: b
      type: harbor
      url: http://$HOST:$PORT_B
  rules:
    - name: to-b
      destination: b
      repositories: ["bench-repl/**"]
EOF
log "A on $HOST:$PORT_A (rule to-b -> $HOST:$PORT_B, not started yet), metrics on $PORT_DEBUG"
taskset -c "$SERVER_CPU" "$BERTH_BIN" serve "$A_DIR/config.yml" >"$A_DIR/server.out" 2>"$A_DIR/server.log" &
A_PID=$!
PIDS+=("$A_PID")
A_URL="http://$HOST:$PORT_A"
wait_ready "$A_PID" "$A_URL/v2/" "A" "$A_DIR/server.log"
t_a_ready="$(now_ns)"

status_line() {
  taskset -c "$GEN_CPU" "$BERTH_BIN" replication status "$A_DIR/config.yml" 2>>"$A_DIR/status.err" | grep '^to-b:' || true
}
queued() { awk '{print $2 + 0}' <<<"$1"; }
metric() { # NAME: A's value of NAME{rule="to-b"} (0 if absent)
  curl -s "http://$HOST:$PORT_DEBUG/metrics" | awk -v m="$1" '$1 ~ "^" m "\\{" && $1 ~ /rule="to-b"/ {v = $2} END {print v + 0}'
}

# ---------------------------------------------------------------- seed A
SEED_JSON="$BASE/results/seed.json"
log "seeding A (berth-bench repl_seed ${QUICK_ARG[*]} ${REPL_EXTRA[*]})"
rc=0
taskset -c "$GEN_CPU" "$BENCH_BIN" --url "$A_URL" --server-pid "$A_PID" --label berth-a \
  --push-method single-post --scenarios repl_seed --json "$SEED_JSON" \
  "${QUICK_ARG[@]}" "${REPL_EXTRA[@]}" "${EXTRA[@]}" >"$BASE/seed.out" 2>&1 || rc=$?
((rc == 0)) || { tail -n 20 "$BASE/seed.out" >&2; die "repl_seed exited $rc"; }
grep -E '^\s+seeded' "$BASE/seed.out" >&2 || true
N="$(jq '.results[0].extra.images' "$SEED_JSON")"
UNIQUE="$(jq '.results[0].extra.unique_bytes' "$SEED_JSON")"
LOGICAL="$(jq '.results[0].extra.logical_bytes' "$SEED_JSON")"
BIG="$(jq '.results[0].extra.big_images' "$SEED_JSON")"
BIG_MIB="$(jq '.results[0].extra.big_layer_bytes / 1048576' "$SEED_JSON")"
BLOBS="$(jq '.results[0].extra.distinct_blobs' "$SEED_JSON")"

t0="$(now_ns)"
line=""
while :; do
  line="$(status_line)"
  [[ -n "$line" && "$(queued "$line")" -ge "$N" ]] && break
  (($(now_ns) - t0 < 30000000000)) || die "A's status never showed $N queued (last: ${line:-nothing}; see $A_DIR/status.err)"
  sleep 0.1
done
log "A: $line"

# ---------------------------------------------------------------- B up: A copies
log "starting B on $HOST:$PORT_B"
a_cpu0="$(cpu_s "$A_PID")"
retries0="$(metric berth_replication_retries_total)"
down_s="$(secs "$t_a_ready" "$(now_ns)")"
start_berth_at "$B_DIR" "$PORT_B"
B_PID="$SERVER_PID"
B_URL="$SERVER_URL"
t_ready="$(now_ns)"
polls=0
while :; do
  line="$(status_line)"
  polls=$((polls + 1))
  if [[ -n "$line" && "$(queued "$line")" == 0 ]]; then break; fi
  kill -0 "$A_PID" 2>/dev/null || die "A exited during the copy (see $A_DIR/server.log)"
  kill -0 "$B_PID" 2>/dev/null || die "B exited during the copy (see $B_DIR/server.log)"
  (($(now_ns) - t_ready < COPY_TIMEOUT * 1000000000)) || die "A still had something queued after ${COPY_TIMEOUT}s: $line"
  sleep 0.1
done
t_done="$(now_ns)"
a_cpu1="$(cpu_s "$A_PID")"
b_cpu="$(cpu_s "$B_PID")"
sleep 0.3 # B's log is written by a background thread
read -r b_first b_last b_requests b_handler_s <<<"$(copier_window "$B_DIR/server.log")"
[[ -n "${b_first:-}" ]] || die "no request from A in B's access log"
final_status="$line"
m_images="$(metric berth_replication_images_total)"
m_bytes="$(metric berth_replication_bytes_total)"
m_retries="$(metric berth_replication_retries_total)"
m_failures="$(metric berth_replication_failures_total)"
berth_total_s="$(secs "$t_ready" "$t_done")"
berth_wait_s="$(secs "$t_ready" "$b_first")"
berth_copy_s="$(secs "$b_first" "$t_done")"
berth_log_s="$(secs "$b_first" "$b_last")"
berth_a_cpu="$(awk -v a="$a_cpu0" -v b="$a_cpu1" 'BEGIN {printf "%.2f", b - a}')"
status_bytes="$(sed -E 's/.* ([0-9]+) bytes copied.*/\1/' <<<"$final_status")"
status_images="$(sed -E 's/.* ([0-9]+) images,.*/\1/' <<<"$final_status")"
status_failures="$(sed -E 's/.* ([0-9]+) failures.*/\1/' <<<"$final_status")"
log "A: $final_status (${berth_total_s}s after B was ready; A's first request on B after ${berth_wait_s}s; $b_requests requests on B, ${b_handler_s}s in B's handlers)"
((status_images == N)) || problems+=("berth: status says $status_images images copied, $N were pushed")
((status_failures == 0)) || problems+=("berth: status says $status_failures failures")
((status_bytes == UNIQUE)) || log "  note: status says $status_bytes bytes copied; the set's distinct blobs and manifests are $UNIQUE bytes"
verify_copy B "$B_URL"
berth_verify="$(jq -n --argjson e "$V_EQUAL" --argjson d "$V_DIFFER" --argjson m "$V_MISSING" \
  --argjson bo "$V_BLOBS_OK" --argjson bb "$V_BLOBS_BAD" --arg media "$V_MEDIA" --arg first "$V_FIRST_DIFF" \
  '{manifests_equal: $e, manifests_differ: $d, manifests_missing: $m, blobs_hashed_ok: $bo, blobs_bad: $bb, media_types: $media, first_difference: $first}')"
stop_pid "$B_PID"

# ---------------------------------------------------------------- skopeo sync: A -> C
SK_DIR="$BASE/skopeo"
mkdir -p "$SK_DIR"
{
  echo "$HOST:$PORT_A:"
  echo "  tls-verify: false"
  echo "  images:"
  jq -r '.results[0].extra.manifests[] | "    \(.repo): [\"v1\"]"' "$SEED_JSON"
} >"$SK_DIR/sync.yml"
SK_ARGS=(sync --src yaml --dest docker --dest-tls-verify=false --all)
preserve=no
if [[ "$SKOPEO_PRESERVE" != 0 ]]; then
  if skopeo sync --help 2>&1 | grep -q -- '--preserve-digests'; then
    SK_ARGS+=(--preserve-digests)
    preserve=yes
  else
    log "warning: this skopeo has no --preserve-digests: it may rewrite manifests"
  fi
fi
SK_ARGS+=("${SKOPEO_EXTRA[@]}" "$SK_DIR/sync.yml" "$HOST:$PORT_C/bench-repl")
SK_VERSION="$(skopeo --version | awk '{print $3}')"
start_berth_at "$C_DIR" "$PORT_C"
C_PID="$SERVER_PID"
C_URL="$SERVER_URL"
log "skopeo $SK_VERSION ${SK_ARGS[*]}"
a_cpu0="$(cpu_s "$A_PID")"
TIMEFORMAT='%3R %3U %3S'
sk_rc=0
t_sk0="$(now_ns)"
sk_time="$({ time taskset -c "$GEN_CPU" skopeo "${SK_ARGS[@]}" >"$SK_DIR/sync.log" 2>&1; } 2>&1)" || sk_rc=$?
t_sk1="$(now_ns)"
a_cpu1="$(cpu_s "$A_PID")"
c_cpu="$(cpu_s "$C_PID")"
read -r _ sk_u sk_s <<<"$(tail -n1 <<<"$sk_time")"
sk_cpu="$(awk -v u="$sk_u" -v s="$sk_s" 'BEGIN {printf "%.2f", u + s}')"
((sk_rc == 0)) || { tail -n 20 "$SK_DIR/sync.log" >&2; problems+=("skopeo sync exited $sk_rc (see $SK_DIR/sync.log)"); }
sleep 0.3
read -r c_first c_last c_requests c_handler_s <<<"$(copier_window "$C_DIR/server.log")"
sk_wall_s="$(secs "$t_sk0" "$t_sk1")"
sk_log_s=""
[[ -n "${c_first:-}" ]] && sk_log_s="$(secs "$c_first" "$c_last")"
sk_a_cpu="$(awk -v a="$a_cpu0" -v b="$a_cpu1" 'BEGIN {printf "%.2f", b - a}')"
sk_blobs_copied="$(grep -c 'Copying blob' "$SK_DIR/sync.log" || true)"
sk_blobs_skipped="$(grep -c 'skipped: already exists' "$SK_DIR/sync.log" || true)"
sk_images_done="$(grep -Eo '[0-9]+ images? transferred|Synced [0-9]+ images?' "$SK_DIR/sync.log" | tail -n1 || true)"
log "skopeo: ${sk_wall_s}s, exit $sk_rc, ${sk_cpu} CPU-s; ${c_requests:-0} requests on C, ${c_handler_s:-0}s in C's handlers; ${sk_images_done:-?}; 'Copying blob' lines: $sk_blobs_copied ($sk_blobs_skipped 'already exists')"
verify_copy C "$C_URL"
sk_verify="$(jq -n --argjson e "$V_EQUAL" --argjson d "$V_DIFFER" --argjson m "$V_MISSING" \
  --argjson bo "$V_BLOBS_OK" --argjson bb "$V_BLOBS_BAD" --arg media "$V_MEDIA" --arg first "$V_FIRST_DIFF" \
  '{manifests_equal: $e, manifests_differ: $d, manifests_missing: $m, blobs_hashed_ok: $bo, blobs_bad: $bb, media_types: $media, first_difference: $first}')"
c_data="$(du -sb "$C_DIR/data" | cut -f1)"
stop_pid "$C_PID"
load_end="$(loadavg)"

# ---------------------------------------------------------------- report
mkdir -p "$(dirname "$OUT")"
jq -n --arg started "$started" --arg ended "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" \
  --arg load_start "$load_start" --arg load_end "$load_end" --argjson quick "$([[ $QUICK == 1 ]] && echo true || echo false)" \
  --argjson cpus "$(nproc)" --arg cpu_model "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
  --arg storage "$(df --output=source,fstype "$BASE" | tail -n1 | tr -s ' ')" \
  --arg berth_bin "$BERTH_BIN" --arg berth_version "$("$BERTH_BIN" --version 2>/dev/null || true)" \
  --argjson server_cpu "$SERVER_CPU" --argjson gen_cpu "$GEN_CPU" \
  --slurpfile seed "$SEED_JSON" --argjson n "$N" --argjson unique "$UNIQUE" --argjson logical "$LOGICAL" \
  --argjson total "$berth_total_s" --argjson wait "$berth_wait_s" --argjson copy "$berth_copy_s" \
  --argjson logw "$berth_log_s" --argjson breq "$b_requests" --argjson bhs "$b_handler_s" --argjson polls "$polls" \
  --argjson acpu "$berth_a_cpu" --argjson bcpu "$b_cpu" --arg status "$final_status" \
  --argjson mi "$m_images" --argjson mb "$m_bytes" --argjson mr "$m_retries" --argjson mr0 "$retries0" --argjson mf "$m_failures" \
  --argjson bv "$berth_verify" --argjson sv "$sk_verify" --arg down "$down_s" \
  --arg skv "$SK_VERSION" --arg ska "skopeo ${SK_ARGS[*]}" --arg preserve "$preserve" --argjson skrc "$sk_rc" \
  --argjson skwall "$sk_wall_s" --arg sklog "$sk_log_s" --argjson skcpu "$sk_cpu" --argjson skacpu "$sk_a_cpu" \
  --argjson ccpu "$c_cpu" --argjson creq "${c_requests:-0}" --argjson chs "${c_handler_s:-0}" --argjson skbc "$sk_blobs_copied" --argjson skbs "$sk_blobs_skipped" \
  --argjson cdata "$c_data" '
  def mbps($s): if $s > 0 then $unique / 1e6 / $s else null end;
  def ips($s): if $s > 0 then $n / $s else null end;
  def gib: $unique / 1073741824;
  {
    tool: "replication.sh", started: $started, ended: $ended, quick: $quick,
    machine: {cpus: $cpus, cpu_model: $cpu_model, storage: $storage, server_cpu: $server_cpu,
      copier_cpu: $gen_cpu, load_start: $load_start, load_end: $load_end},
    berth: {binary: $berth_bin, version: $berth_version},
    image_set: {images: $n, unique_bytes: $unique, logical_bytes: $logical, seed_row: $seed[0].results[0]},
    berth_replication: {
      what: "A (rule to-b) copies to B: total = B ready -> A status 0 queued (polled every 100 ms); wait = B ready -> A first request on B (B access log); copy = that request -> 0 queued",
      total_s: $total, wait_s: $wait, copy_s: $copy, log_window_s: $logw, requests_on_b: $breq, b_handler_s: $bhs, status_polls: $polls,
      mb_per_s: mbps($copy), images_per_s: ips($copy),
      mb_per_s_total: mbps($total), images_per_s_total: ips($total),
      a_cpu_s: $acpu, b_cpu_s: $bcpu, server_cpu_s: ($acpu + $bcpu),
      server_cpu_s_per_gib: (($acpu + $bcpu) / gib),
      status: $status,
      metrics: {images_total: $mi, bytes_total: $mb, retries_total: $mr, retries_before_b: $mr0, failures_total: $mf},
      verify: $bv },
    skopeo_sync: {
      what: "one skopeo sync --src yaml call listing every repository, A -> C, timed from launch to exit",
      version: $skv, command: $ska, preserve_digests: $preserve, exit: $skrc,
      wall_s: $skwall, log_window_s: (if $sklog == "" then null else ($sklog | tonumber) end), requests_on_c: $creq, c_handler_s: $chs,
      mb_per_s: mbps($skwall), images_per_s: ips($skwall),
      skopeo_cpu_s: $skcpu, a_cpu_s: $skacpu, c_cpu_s: $ccpu, server_cpu_s: ($skacpu + $ccpu),
      server_cpu_s_per_gib: (($skacpu + $ccpu) / gib), skopeo_cpu_s_per_gib: ($skcpu / gib),
      copying_blob_lines: $skbc, already_exists_lines: $skbs, c_data_bytes: $cdata,
      verify: $sv },
    ratio_berth_to_skopeo: {
      mb_per_s: (if $copy > 0 and $skwall > 0 then $skwall / $copy else null end),
      mb_per_s_with_wait: (if $total > 0 and $skwall > 0 then $skwall / $total else null end),
      server_cpu_per_gib: (if ($skacpu + $ccpu) > 0 then ($acpu + $bcpu) / ($skacpu + $ccpu) else null end) }
  }' >"$OUT"

echo
echo "Replication Berth -> Berth beside skopeo sync — $started to $(date -u '+%H:%M:%S UTC'); $(nproc) CPUs, registries on CPU $SERVER_CPU, generator and skopeo on CPU $GEN_CPU"
echo "load average (1/5/15 min) at start $load_start, at end $load_end; storage: $(df --output=source,fstype "$BASE" | tail -n1 | tr -s ' ')"
echo "image set: $N images bench-repl/app-NNN:v1 ($BIG with a $BIG_MIB MiB layer), $BLOBS distinct blobs;" \
  "$(awk -v u="$UNIQUE" 'BEGIN {printf "%.1f", u / 1e6}') MB to copy ($(awk -v u="$LOGICAL" 'BEGIN {printf "%.1f", u / 1e6}') MB counting the shared base in every image)"
echo "B was down for the first ${down_s}s of A's life (the seeding); A's worker had retried $retries0 times by then"
echo
jq -r '
  def f($x; $d): if $x == null then "-" else ($x * pow(10; $d) | round / pow(10; $d) | tostring) end;
  ["copy", "s", "MB/s", "images/s", "server CPU-s", "copier CPU-s", "srv CPU-s/GiB", "manifests equal"],
  ["berth replication (first request on B -> 0 queued)", f(.berth_replication.copy_s; 2), f(.berth_replication.mb_per_s; 1),
    f(.berth_replication.images_per_s; 1), f(.berth_replication.server_cpu_s; 2), "(in A)",
    f(.berth_replication.server_cpu_s_per_gib; 2), "\(.berth_replication.verify.manifests_equal)/\(.image_set.images)"],
  ["berth replication (B ready -> 0 queued, incl. \(f(.berth_replication.wait_s; 1)) s retry wait)", f(.berth_replication.total_s; 2),
    f(.berth_replication.mb_per_s_total; 1), f(.berth_replication.images_per_s_total; 1), "", "", "", ""],
  ["skopeo sync, one call (launch -> exit)", f(.skopeo_sync.wall_s; 2), f(.skopeo_sync.mb_per_s; 1), f(.skopeo_sync.images_per_s; 1),
    f(.skopeo_sync.server_cpu_s; 2), f(.skopeo_sync.skopeo_cpu_s; 2), f(.skopeo_sync.server_cpu_s_per_gib; 2),
    "\(.skopeo_sync.verify.manifests_equal)/\(.image_set.images)"]
  | @tsv' "$OUT" | column -t -s $'\t'
echo
jq -r '"berth / skopeo: \(.ratio_berth_to_skopeo.mb_per_s // "-" | tostring | .[0:5])x the MB/s and images/s (\(.ratio_berth_to_skopeo.mb_per_s_with_wait // "-" | tostring | .[0:5])x counting the retry wait), \(.ratio_berth_to_skopeo.server_cpu_per_gib // "-" | tostring | .[0:5])x the registries'"'"' CPU per GiB",
  "berth status: \(.berth_replication.status)",
  "skopeo: \(.skopeo_sync.command | sub(" [^ ]*sync.yml"; " sync.yml")) (preserve digests: \(.skopeo_sync.preserve_digests)); manifest types on C: \(.skopeo_sync.verify.media_types)"' "$OUT"
log "JSON: $OUT"
if ((${#problems[@]})); then
  echo
  echo "PROBLEMS:"
  printf '  %s\n' "${problems[@]}"
  exit 1
fi

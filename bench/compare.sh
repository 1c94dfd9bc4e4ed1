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
#   CARGO_TARGET_DIR=DIR  build into (and take the binaries from) DIR/release instead of target/
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
OUT="${OUT:-${CARGO_TARGET_DIR:-$ROOT/target}/bench/compare.json}"
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

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_prereqs
bench_build
bench_tmpdir berth-compare

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

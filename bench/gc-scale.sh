#!/usr/bin/env bash
# Garbage-collection and scale scenarios: Berth (`berth gc`, online) beside CNCF Distribution
# 2.8's offline `docker-registry garbage-collect` on the same data, and Berth at 100,000
# repositories and 1,000,000 tags. The same set-up as compare.sh (bench/lib.sh): servers pinned
# to CPU 0, the generator to CPU 1, 127.0.0.1 only, one temp dir; the collectors run on the
# server's CPU. Nothing here asserts a timing: it measures and prints.
#
#   bench/gc-scale.sh                     # every part, SCALE=full (~35 min on 2 cores)
#   QUICK=1 bench/gc-scale.sh             # small counts: an end-to-end check (~1 min)
#   SCENARIOS=gc_delete SERVERS="berth distribution berth-s3 distribution-s3" bench/gc-scale.sh
#
# Parts (SCENARIOS=a,b; default gc_delete,gc_load,scale):
#   gc_delete  seed live images + garbage (berth-bench gc_seed), collect, verify (gc_verify):
#              Berth: `berth gc --grace 0s` twice, 1.1 s apart, with the server running (the
#              first run unlinks, the second deletes what that made unreferenced), then once
#              more (should find nothing); Distribution: server stopped, `docker-registry
#              garbage-collect CONFIG`, server started again. Rows gc_delete (blobs deleted
#              per second by the run that deleted them), gc_delete_total (whole collection).
#   gc_load    p50/p99 of image pushes and pulls at once, idle, then with `berth gc --grace 2s`
#              back to back (berth-bench gc_load --gc-cmd). Berth servers only: Distribution
#              cannot collect while it serves writes.
#   scale      seed (berth-bench scale_seed), then three restarts timed from process start to
#              the first 200 on GET /v2/, then first and middle pages (scale_pages).
#
# Environment:
#   SERVERS="berth distribution"   also berth-s3, distribution-s3 (gc_delete and gc_load only;
#                   Garage as in compare.sh's S3 mode)
#   SCALE=full|small|quick  Berth's scale: full = 100,000 repositories x 9 tags + one repository
#                   with 100,000 tags (1,000,000 tags); small = a tenth (10,000 x 9 + 10,000);
#                   quick = 1,000 x 1 + 2,000 (default full; QUICK=1 makes it quick)
#   DIST_SCALE=...  Distribution's scale (default small when SCALE=full: its filesystem driver
#                   takes ~350 tag PUTs/s here, so 1,000,000 tags would take ~50 min).
#                   When it differs from SCALE, Berth also runs at DIST_SCALE, labelled
#                   "berth", for a like-for-like ratio; the SCALE run is "berth-<SCALE>".
#   QUICK=1         small counts everywhere (berth-bench --quick)
#   GC_ARGS=...     extra berth-bench arguments for gc_seed (e.g. "--gc-blobs 50000")
#   GC_LOAD_GRACE=2s  the grace period of the collector loop during gc_load
#   GC_LOAD_NICE=N  run that collector under `nice -n N` (default: not niced)
#   DIST_GC_ARGS=...  extra `docker-registry garbage-collect` flags (e.g. --delete-untagged)
#   OUT=FILE        combined JSON (default $CARGO_TARGET_DIR or target/, then bench/gc-scale.json)
#   BENCH_ARGS, BENCH_TMP, DIST_ACCESSLOG, KEEP, BUILD, BERTH_BIN, BENCH_BIN, GARAGE_BIN,
#   CARGO_TARGET_DIR: as in compare.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK="${QUICK:-0}"
SCENARIOS="${SCENARIOS:-gc_delete,gc_load,scale}"
SERVERS="${SERVERS:-berth distribution}"
if [[ "$QUICK" == 1 ]]; then SCALE="${SCALE:-quick}"; else SCALE="${SCALE:-full}"; fi
if [[ -z "${DIST_SCALE:-}" ]]; then
  DIST_SCALE=small
  [[ "$SCALE" == quick || "$SCALE" == small ]] && DIST_SCALE="$SCALE"
fi
OUT="${OUT:-${CARGO_TARGET_DIR:-$ROOT/target}/bench/gc-scale.json}"
BENCH_ARGS="${BENCH_ARGS:-}"
DIST_ACCESSLOG="${DIST_ACCESSLOG:-1}"
GC_LOAD_GRACE="${GC_LOAD_GRACE:-2s}"
GC_LOAD_NICE="${GC_LOAD_NICE:-}"
HOST=127.0.0.1

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_prereqs
bench_build
bench_tmpdir berth-gc-scale

QUICK_ARG=()
[[ "$QUICK" == 1 ]] && QUICK_ARG=(--quick)
read -r -a EXTRA <<<"$BENCH_ARGS"
read -r -a GC_EXTRA <<<"${GC_ARGS:-}"
read -r -a DIST_GC_EXTRA <<<"${DIST_GC_ARGS:-}"
problems=()
notes=()

part() { [[ ",$SCENARIOS," == *",$1,"* ]]; }

scale_args() { # SCALE: berth-bench flags for that scale
  case $1 in
    full) echo "--scale-repos 100000 --scale-tags-per-repo 9 --scale-big-tags 100000" ;;
    small) echo "--scale-repos 10000 --scale-tags-per-repo 9 --scale-big-tags 10000" ;;
    quick) echo "--scale-repos 1000 --scale-tags-per-repo 1 --scale-big-tags 2000" ;;
    *) die "SCALE/DIST_SCALE must be full, small or quick (got $1)" ;;
  esac
}

# Runs the generator against the current server; a digest mismatch is fatal.
gen() { # LABEL ARGS...
  local label="$1" rc=0 store=()
  shift
  [[ "$label" == *-s3* ]] && store=(--store-pid "$GARAGE_PID")
  taskset -c "$GEN_CPU" "$BENCH_BIN" --url "$SERVER_URL" --server-pid "$SERVER_PID" --label "$label" \
    "${QUICK_ARG[@]}" "${store[@]}" "${EXTRA[@]}" "$@" || rc=$?
  case $rc in
    0) ;;
    3) die "$label: DIGEST MISMATCH (generator aborted)" ;;
    *) problems+=("$label: berth-bench $* exited $rc") ;;
  esac
  kill -0 "$SERVER_PID" 2>/dev/null || problems+=("$label: server CRASHED (see its log)")
}

# Runs CMD with its output in LOG; sets T_WALL (s), T_CPU (user+sys s, children included) and RC.
run_timed() { # LOG CMD...
  local log="$1" t rc=0 u s
  shift
  local TIMEFORMAT='%3R %3U %3S'
  t="$({ time "$@" >"$log" 2>&1; } 2>&1)" || rc=$?
  read -r T_WALL u s <<<"$(tail -n1 <<<"$t")"
  T_CPU="$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.3f", u + s}')"
  RC=$rc
}

# One result row in berth-bench's JSON shape (so `berth-bench report` combines it).
row_json() { # SCENARIO OPS ELAPSED_S CPU_S OP_S|"" EXTRA_JSON
  jq -n --arg s "$1" --argjson ops "$2" --argjson el "$3" --argjson cpu "$4" --arg op_s "$5" \
    --argjson extra "$6" '{
      scenario: $s, ok: true, concurrency: 1, ops: $ops, http_requests: 0, bytes: 0,
      elapsed_s: $el, req_per_s: (if $el > 0 then $ops / $el else null end), mb_per_s: 0,
      p50_ms: null, p99_ms: null, op_s: (if $op_s == "" then null else ($op_s | tonumber) end),
      server_cpu_s: $cpu, cpu_s_per_gib: null,
      cpu_s_per_1k_req: (if $ops > 0 then $cpu * 1000 / $ops else null end),
      client_cpu_s: 0, extra: $extra }'
}
rows_file() { # FILE LABEL ROW-FILES...: wraps rows as one run's JSON
  local out="$1" label="$2"
  shift 2
  jq -s --arg l "$label" '{tool: "gc-scale.sh", label: $l, results: .}' "$@" >"$out"
}

# Starts NAME again on the data DIR already holds (same configuration; Berth on disk gets a
# new port). READY_S: seconds from launch to the first 200 on GET /v2/.
restart_server() { # NAME DIR
  local name="$1" dir="$2"
  case $name in
    berth) start_berth "$dir" ;;
    distribution | distribution-s3)
      taskset -c "$SERVER_CPU" "${CLEAN_ENV[@]}" "$DIST_BIN" serve "$dir/config.yml" >>"$dir/server.log" 2>&1 &
      SERVER_PID=$!
      PIDS+=("$SERVER_PID")
      SERVER_URL="http://$(awk '/^  addr:/ {print $2}' "$dir/config.yml")"
      wait_ready "$SERVER_PID" "$SERVER_URL/v2/" "$name" "$dir/server.log"
      ;;
    berth-s3)
      taskset -c "$SERVER_CPU" "${CLEAN_ENV[@]}" "$BERTH_BIN" serve "$dir/config.yml" >>"$dir/server.out" 2>>"$dir/server.log" &
      SERVER_PID=$!
      PIDS+=("$SERVER_PID")
      SERVER_URL="http://$(awk '/^  addr:/ {print $2}' "$dir/config.yml")"
      wait_ready "$SERVER_PID" "$SERVER_URL/v2/" "$name" "$dir/server.log"
      ;;
    *) die "cannot restart $name" ;;
  esac
}

berth_gc_cmd() { # DIR: the `berth gc` command line for the server in DIR (without --grace)
  if [[ -f "$1/config.yml" ]]; then
    echo "taskset -c $SERVER_CPU ${CLEAN_ENV[*]} $BERTH_BIN gc --config $1/config.yml"
  else
    echo "taskset -c $SERVER_CPU $BERTH_BIN gc --data $1/data"
  fi
}
count_before() { # LINE WORD: the number just before WORD in LINE (0 if none)
  awk -v w="$2" '{gsub(/[,;]/, " "); for (i = 2; i <= NF; i++) if ($i == w) {print $(i - 1); exit}} END {}' <<<"$1" |
    grep -E '^[0-9]+$' || echo 0
}

inputs=()

# ---------------------------------------------------------------- gc_delete
gc_delete() { # NAME
  local name="$1" dir="$BASE/gc-$name" r="$BASE/results/gc-$name"
  log "gc_delete: $name"
  start_server "$name" "$dir"
  gen "$name" --scenarios gc_seed --state "$dir/gc-state.json" --json "$r-seed.json" "${GC_EXTRA[@]}"
  [[ -f "$r-seed.json" ]] || return 0
  inputs+=("$name=$r-seed.json")
  local garbage_blobs garbage_bytes
  garbage_blobs="$(jq '.results[0].extra.garbage_blobs + .results[0].extra.garbage_manifests' "$r-seed.json")"
  garbage_bytes="$(jq '.results[0].extra.garbage_bytes' "$r-seed.json")"
  local storage
  storage="disk"
  [[ "$name" == *-s3 ]] && storage="S3 (Garage)"
  if [[ "$name" == berth* ]]; then
    local cmd w=() c=() lines=() n=() i
    read -r -a cmd <<<"$(berth_gc_cmd "$dir")"
    for i in 1 2 3; do
      sleep 1.1
      run_timed "$dir/gc$i.log" "${cmd[@]}" --grace 0s
      ((RC == 0)) || { problems+=("$name: berth gc run $i exited $RC (see $dir/gc$i.log)"); tail -n 5 "$dir/gc$i.log" >&2; }
      w+=("$T_WALL")
      c+=("$T_CPU")
      lines+=("$(grep -v '^\s*$' "$dir/gc$i.log" | tail -n1)")
      n+=("$(count_before "${lines[-1]}" blobs)")
      log "  berth gc run $i: ${T_WALL}s wall, ${T_CPU} CPU-s: ${lines[-1]}"
    done
    # The run that deleted the most blobs gives the rate; the whole collection is runs 1 and 2.
    local k=0
    ((n[1] > n[0])) && k=1
    local extra
    extra="$(jq -n --arg storage "$storage" --argjson w "$(printf '%s\n' "${w[@]}" | jq -s .)" \
      --argjson c "$(printf '%s\n' "${c[@]}" | jq -s .)" --argjson n "$(printf '%s\n' "${n[@]}" | jq -s .)" \
      --argjson lines "$(printf '%s\n' "${lines[@]}" | jq -R . | jq -s .)" --argjson k "$k" \
      --argjson gb "$garbage_blobs" --argjson bytes "$garbage_bytes" --arg cmd "${cmd[*]} --grace 0s" '{
        what: "blobs deleted per second (wall time of the berth gc process that deleted them, server running)",
        storage: $storage, command: $cmd, run_wall_s: $w, run_cpu_s: $c, run_blobs: $n, run_lines: $lines,
        rate_from_run: ($k + 1), garbage_seeded: $gb, garbage_bytes: $bytes, server: "running (online)" }')"
    row_json gc_delete "${n[k]}" "${w[k]}" "${c[k]}" "" "$extra" >"$r-delete.row"
    row_json gc_delete_total "$((n[0] + n[1]))" "$(awk -v a="${w[0]}" -v b="${w[1]}" 'BEGIN {print a + b}')" \
      "$(awk -v a="${c[0]}" -v b="${c[1]}" 'BEGIN {print a + b}')" \
      "$(awk -v a="${w[0]}" -v b="${w[1]}" 'BEGIN {print a + b}')" \
      "$(jq '.what = "whole collection: runs 1 and 2 (the 1.1 s waits between them not counted); op s = their wall time"' <<<"$extra")" \
      >"$r-total.row"
  else
    stop_pid "$SERVER_PID"
    run_timed "$dir/gc.log" taskset -c "$SERVER_CPU" "${CLEAN_ENV[@]}" "$DIST_BIN" garbage-collect \
      "${DIST_GC_EXTRA[@]}" "$dir/config.yml"
    ((RC == 0)) || { problems+=("$name: garbage-collect exited $RC (see $dir/gc.log)"); tail -n 5 "$dir/gc.log" >&2; }
    local summary deleted
    summary="$(grep -Eo '[0-9]+ blobs marked, [0-9]+ blobs and [0-9]+ manifests eligible for deletion' "$dir/gc.log" | tail -n1 || true)"
    deleted="$(awk '{print $4 + 0}' <<<"${summary:-0 0 0 0}")"
    log "  garbage-collect: ${T_WALL}s wall, ${T_CPU} CPU-s: $summary"
    local extra
    extra="$(jq -n --arg storage "$storage" --arg summary "$summary" --argjson gb "$garbage_blobs" \
      --argjson bytes "$garbage_bytes" --arg cmd "docker-registry garbage-collect ${DIST_GC_EXTRA[*]} config.yml" '{
        what: "blobs deleted per second (wall time of docker-registry garbage-collect, server stopped)",
        storage: $storage, command: $cmd, summary: $summary, garbage_seeded: $gb, garbage_bytes: $bytes,
        server: "stopped (offline)" }')"
    row_json gc_delete "$deleted" "$T_WALL" "$T_CPU" "" "$extra" >"$r-delete.row"
    row_json gc_delete_total "$deleted" "$T_WALL" "$T_CPU" "$T_WALL" \
      "$(jq '.what = "whole collection (one run, server stopped; restart not counted); op s = its wall time"' <<<"$extra")" \
      >"$r-total.row"
    restart_server "$name" "$dir"
  fi
  rows_file "$r-gc.json" "$name" "$r-delete.row" "$r-total.row"
  inputs+=("$name=$r-gc.json")
  gen "$name" --scenarios gc_verify --state "$dir/gc-state.json" --json "$r-verify.json"
  [[ -f "$r-verify.json" ]] && inputs+=("$name=$r-verify.json")
  stop_pid "$SERVER_PID"
  log "  data after collection: $(du -sh "$dir" | cut -f1)"
  rm -rf "$dir/data" "$dir/meta"
}

# ---------------------------------------------------------------- gc_load
gc_load() { # NAME
  local name="$1" dir="$BASE/load-$name" r="$BASE/results/load-$name"
  if [[ "$name" != berth* ]]; then
    notes+=("gc_load on $name: not applicable: Distribution 2.8 collects garbage offline only (registry stopped or read-only)")
    return 0
  fi
  log "gc_load: $name"
  start_server "$name" "$dir"
  local nice=""
  [[ -n "$GC_LOAD_NICE" ]] && nice="nice -n $GC_LOAD_NICE "
  gen "$name" --scenarios gc_load --gc-cmd "$nice$(berth_gc_cmd "$dir") --grace $GC_LOAD_GRACE" --json "$r.json"
  [[ -f "$r.json" ]] && inputs+=("$name=$r.json")
  stop_pid "$SERVER_PID"
  rm -rf "$dir/data" "$dir/meta"
}

# ---------------------------------------------------------------- scale
scale_run() { # NAME LABEL SCALE
  local name="$1" label="$2" scale="$3" dir="$BASE/scale-$2" r="$BASE/results/scale-$2" args
  read -r -a args <<<"$(scale_args "$scale")"
  log "scale: $label ($name at scale $scale: ${args[*]})"
  start_server "$name" "$dir"
  gen "$label" --scenarios scale_seed "${args[@]}" --json "$r-seed.json"
  [[ -f "$r-seed.json" ]] && inputs+=("$label=$r-seed.json")
  stop_pid "$SERVER_PID"
  local usage times=() i
  usage="$(du -sh "$dir" | cut -f1)"
  log "  $label data: $usage"
  for i in 1 2 3; do
    restart_server "$name" "$dir"
    times+=("$READY_S")
    log "  restart $i: GET /v2/ 200 after ${READY_S}s"
    ((i < 3)) && stop_pid "$SERVER_PID"
  done
  local med
  med="$(printf '%s\n' "${times[@]}" | sort -g | sed -n 2p)"
  row_json scale_restart 3 "$(printf '%s\n' "${times[@]}" | awk '{s += $1} END {print s}')" 0 "$med" \
    "$(jq -n --argjson t "$(printf '%s\n' "${times[@]}" | jq -s .)" --arg scale "$scale" --arg usage "$usage" '{
      what: "seconds from launching the server process on the seeded data to its first 200 on GET /v2/ (polled every 10 ms); op s = median of 3",
      restarts_s: $t, scale: $scale, data_size: $usage }')" >"$r-restart.row"
  rows_file "$r-restart.json" "$label" "$r-restart.row"
  inputs+=("$label=$r-restart.json")
  gen "$label" --scenarios scale_pages "${args[@]}" --json "$r-pages.json"
  [[ -f "$r-pages.json" ]] && inputs+=("$label=$r-pages.json")
  stop_pid "$SERVER_PID"
  rm -rf "$dir/data" "$dir/meta"
}

# ---------------------------------------------------------------- run
started="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
for name in $SERVERS; do
  part gc_delete && gc_delete "$name"
done
for name in $SERVERS; do
  part gc_load && gc_load "$name"
done
if part scale; then
  for name in $SERVERS; do
    case $name in
      berth)
        scale_run berth "$([[ "$SCALE" == "$DIST_SCALE" ]] && echo berth || echo "berth-$SCALE")" "$SCALE"
        if [[ "$SCALE" != "$DIST_SCALE" && " $SERVERS " == *" distribution "* ]]; then
          scale_run berth berth "$DIST_SCALE"
        fi
        ;;
      distribution) scale_run distribution distribution "$DIST_SCALE" ;;
      *) notes+=("scale on $name: not run (the scale part runs berth and distribution on disk)") ;;
    esac
  done
fi

# ---------------------------------------------------------------- report
mkdir -p "$(dirname "$OUT")"
echo
echo "GC and scale — $started to $(date -u '+%H:%M:%S UTC'); $(nproc) CPUs, server on CPU $SERVER_CPU, generator on CPU $GEN_CPU"
echo "Distribution $("$DIST_BIN" --version 2>/dev/null | awk '{print $3}'); storage: $(df --output=source,fstype "$BASE" | tail -n1 | tr -s ' ')"
echo "scale: berth $SCALE ($(scale_args "$SCALE")), distribution $DIST_SCALE ($(scale_args "$DIST_SCALE"))"
echo
disk=() s3=()
for i in "${inputs[@]}"; do
  if [[ "${i%%=*}" == *-s3* ]]; then s3+=("$i"); else disk+=("$i"); fi
done
combined=()
if ((${#disk[@]})); then
  "$BENCH_BIN" report --base berth --out "$BASE/report-disk.json" "${disk[@]}"
  combined+=("$BASE/report-disk.json")
fi
if ((${#s3[@]})); then
  echo
  "$BENCH_BIN" report --base berth-s3 --out "$BASE/report-s3.json" "${s3[@]}"
  combined+=("$BASE/report-s3.json")
fi
# gc_load: the collector's effect on the tail, per Berth server.
for f in "$BASE"/results/load-*.json; do
  [[ -f "$f" ]] || continue
  echo
  jq -r '.label as $l | .results[] | select(.ok and (.scenario | endswith("_gc"))) |
    "\($l) \(.scenario): p99 \(.p99_ms) ms = \(.extra.p99_vs_idle // "-" | tostring | .[0:5])x idle; p50 \(.p50_ms) ms = \(.extra.p50_vs_idle // "-" | tostring | .[0:5])x idle; \(.extra.gc_runs) gc runs deleted \(.extra.gc_blobs_deleted) blobs, \(.extra.gc_links_deleted) links"' "$f"
done
if ((${#combined[@]})); then
  jq -s '{reports: .}' "${combined[@]}" >"$OUT"
  log "combined JSON: $OUT"
fi
if ((${#notes[@]})); then
  echo
  printf '  %s\n' "${notes[@]}"
fi
if ((${#problems[@]})); then
  echo
  echo "PROBLEMS:"
  printf '  %s\n' "${problems[@]}"
  exit 1
fi

#!/usr/bin/env bash
# Runs the ten conformance suites (broker/tests/conformance_*.rs) against each peer and
# prints pass/skip/run counts per suite and transport, then the failed cases.
#
#   benches/peers/run.sh [fleetmq] [fleetmq-bin] [mosquitto] [rumqttd]   (default: all four)
#
# fleetmq      a fresh in-process TestBroker per test (every case runs, none skipped)
# fleetmq-bin  the fleetmq binary (debug build) as an external target, like the others,
#              with benches/peers/fleetmq.toml (anonymous, `$SYS` readable)
# mosquitto    /usr/sbin/mosquitto (MOSQUITTO=...) with benches/peers/mosquitto.conf
# rumqttd      bare rumqttd 0.20 (benches/peers/rumqttd, built in target/bare-rumqttd)
#
# Against an external target the cases that need fleetmq (its config, admin API, a
# restart) print "SKIPPED" and pass; they are counted as skipped. The case that sends v5
# properties to a 3.1.1 subscriber runs last and alone: it breaks bare rumqttd's 3.1.1
# listener. Test output goes to $OUT (default target/peers), one log per peer.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/benches/peers"
OUT=${OUT:-$ROOT/target/peers}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
SUITES=(connect publish subscribe will keepalive v5 topic_alias sys session retained)
POISON=v4_receiver_never_sees_v5_properties
mkdir -p "$OUT"
cd "$ROOT"

# The suites are modules of the broker's one test binary: select them by name.
FILTERS=()
for s in "${SUITES[@]}"; do FILTERS+=("conformance_$s::"); done

PEER_PID=
stop_peer() {
    if [ -n "$PEER_PID" ]; then
        kill "$PEER_PID" 2>/dev/null || true
        wait "$PEER_PID" 2>/dev/null || true
        PEER_PID=
    fi
}
trap stop_peer EXIT

# Refuses to measure whatever already listens on a peer's ports.
ports_free() {
    for port; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "port $port is already in use: stop what listens there first" >&2
            exit 1
        fi
    done
}

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# Runs the suites (the poison case last) with CONFORMANCE_TARGET=$1 (empty: fleetmq).
run_suites() {
    local log=$1 target=$2
    local -a env=()
    [ -n "$target" ] && env=(CONFORMANCE_TARGET="$target")
    env "${env[@]}" cargo test -p fleetmq-broker --test broker --no-fail-fast \
        -- --include-ignored --show-output --skip "$POISON" "${FILTERS[@]}" >"$log" 2>&1 || true
    env "${env[@]}" cargo test -p fleetmq-broker --test broker --no-fail-fast \
        -- --include-ignored --show-output "conformance_v5::$POISON" >>"$log" 2>&1 || true
}

# Per suite and column (test names end in tcp_v4, tcp_v5, ws_v4, ws_v5): passed/run of
# the cases that checked something, then how many were skipped (SKIPPED: fleetmq only,
# or a limit the broker does not announce).
summarise() {
    awk '
    function col(name,    n, parts) { n = split(name, parts, "::"); return parts[n] }
    function suite_of(name,    parts) { split(name, parts, "::"); return substr(parts[1], 13) }
    /^test .* \.\.\. (ok|FAILED)$/ {
        suite = suite_of($2); c = col($2); run[suite, c]++; seen[suite] = 1
        if ($NF == "ok") pass[suite, c]++; else failed = failed "\n  " suite " " $2
    }
    /^---- .* stdout ----$/ { name = $2 }
    /SKIPPED/ && name != "" { skip[suite_of(name), col(name)]++; name = "" }
    function cell(p, r, k) { return sprintf("%d/%d", p - k, r - k) (k ? sprintf(" +%d skip", k) : "") }
    END {
        split("tcp_v4 tcp_v5 ws_v4 ws_v5", cols, " ")
        printf "%-12s", "suite"; for (j = 1; j <= 4; j++) printf " %15s", cols[j]; print ""
        n = split("connect publish subscribe will keepalive v5 topic_alias sys session retained", order, " ")
        for (i = 1; i <= n; i++) {
            s = order[i]; if (!(s in seen)) continue
            printf "%-12s", s
            for (j = 1; j <= 4; j++) {
                c = cols[j]; printf " %15s", cell(pass[s, c], run[s, c], skip[s, c])
                tp[c] += pass[s, c]; tr[c] += run[s, c]; ts[c] += skip[s, c]
            }
            print ""
        }
        printf "%-12s", "total"; for (j = 1; j <= 4; j++) printf " %15s", cell(tp[cols[j]], tr[cols[j]], ts[cols[j]]); print ""
        if (failed != "") print "failed:" failed
    }' "$1"
}

measure() {
    local peer=$1 log="$OUT/$1.log" dir
    case $peer in
    fleetmq)
        run_suites "$log" ""
        ;;
    fleetmq-bin)
        cargo build -q -p fleetmq
        ports_free 41883 49001 48080
        dir=$(mktemp -d)
        "$ROOT/target/debug/fleetmq" serve --config "$HERE/fleetmq.toml" --data-dir "$dir" \
            --mqtt-tcp 127.0.0.1:41883 --mqtt-ws 127.0.0.1:49001 \
            --admin-listen 127.0.0.1:48080 >"$OUT/$peer.server.log" 2>&1 &
        PEER_PID=$!
        wait_port 41883 && wait_port 49001
        run_suites "$log" 127.0.0.1:41883:49001
        stop_peer
        rm -rf "$dir"
        ;;
    mosquitto)
        ports_free 21883 29001
        "$MOSQUITTO" -c "$HERE/mosquitto.conf" >"$OUT/$peer.server.log" 2>&1 &
        PEER_PID=$!
        wait_port 21883 && wait_port 29001
        run_suites "$log" 127.0.0.1:21883:29001
        stop_peer
        ;;
    rumqttd)
        cargo build -q --release --manifest-path "$HERE/rumqttd/Cargo.toml" \
            --target-dir "$ROOT/target/bare-rumqttd"
        ports_free 31883 31884 31901
        "$ROOT/target/bare-rumqttd/release/bare-rumqttd" 31883 31884 31901 \
            >"$OUT/$peer.server.log" 2>&1 &
        PEER_PID=$!
        wait_port 31883 && wait_port 31884 && wait_port 31901
        run_suites "$log" 127.0.0.1:31883:31901:31884
        stop_peer
        ;;
    *)
        echo "unknown peer $peer (fleetmq, fleetmq-bin, mosquitto, rumqttd)" >&2
        exit 2
        ;;
    esac
    echo "== $peer ($log)"
    summarise "$log"
    echo
}

cargo test -q -p fleetmq-broker "${TESTS[@]}" --no-run
for peer in "${@:-fleetmq fleetmq-bin mosquitto rumqttd}"; do
    for p in $peer; do measure "$p"; done
done

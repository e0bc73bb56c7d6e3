#!/usr/bin/env bash
# Pass-through side by side: the same tiny static backend reached directly,
# through realtime-edge, and through nginx (upstream keep-alive), in
# interleaved rounds so that load from anything else on the machine hits all
# three alike. Prints requests/s, p50 latency, CPU per request of the proxy
# (from /proc/<pid>/stat ticks) and the realtime-edge / nginx ratios, the
# proxies' resident memory after the 1 MiB runs, and the load average.
# With "ws" in TESTS it also measures one WebSocket connection's echo
# round trip (p50/p99 and the proxy's CPU per message) to the simulated
# backend's echo endpoint: directly, through realtime-edge's pass-through
# relay, and through nginx's WebSocket proxy.
#
# Needs (installs nothing): nginx and wrk (Debian: `apt-get install nginx wrk`),
# a release build of realtime-edge (`cargo build --release`), bash, awk.
#
# Settings (environment): ROUNDS (3), DURATION (10s), TESTS ("small get1m
# post1m ws"), WS_MESSAGES (20000, per round and target), THREADS (2),
# CONNECTIONS (64), EDGE_BIN (target/release/realtime-edge), PORT_BASE (18080;
# uses PORT_BASE+1 .. PORT_BASE+8 on 127.0.0.1), EDGE_PRELOAD (empty; a
# malloc library for realtime-edge's LD_PRELOAD, to compare allocators
# without a rebuild, e.g. Debian's /usr/lib/x86_64-linux-gnu/libjemalloc.so.2
# or libmimalloc.so.2).
#
# The backend is an nginx with one worker serving a 36-byte JSON file, a
# 1 MiB file, and an upload endpoint that reads and discards a body. The
# nginx proxy has one worker, streams bodies both ways (no request or
# response buffering, like realtime-edge) and keeps up to 64 idle upstream
# connections.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
TESTS=${TESTS:-small get1m post1m ws}
WS_MESSAGES=${WS_MESSAGES:-20000}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
PORT_BASE=${PORT_BASE:-18080}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EDGE_BIN=${EDGE_BIN:-$ROOT/target/release/realtime-edge}

missing=()
command -v nginx >/dev/null || missing+=("nginx (Debian: apt-get install nginx)")
command -v wrk >/dev/null || missing+=("wrk (Debian: apt-get install wrk)")
[ -x "$EDGE_BIN" ] || missing+=("$EDGE_BIN (cargo build --release, or set EDGE_BIN)")
if [ ${#missing[@]} -gt 0 ]; then
    echo "compare-nginx.sh needs, and will not install:" >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 2
fi

BACKEND_PORT=$((PORT_BASE + 1))
NGINX_PORT=$((PORT_BASE + 2))
EDGE_PORT=$((PORT_BASE + 3))
EDGE_ADMIN_PORT=$((PORT_BASE + 4))
SIM_PORT=$((PORT_BASE + 5))      # the simulated backend: WebSocket echo
EDGE_WS_PORT=$((PORT_BASE + 6))  # a realtime-edge in front of it
EDGE_WS_ADMIN_PORT=$((PORT_BASE + 7))
NGINX_WS_PORT=$((PORT_BASE + 8)) # nginx's WebSocket proxy in front of it
CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/compare-nginx.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- the backend -----------------------------------------------------------
mkdir -p "$WORK/www" "$WORK/backend" "$WORK/proxy" "$WORK/edge"
printf '{"id":42,"status":"ok","items":[1]}' >"$WORK/www/small.json"   # 36 bytes
head -c 1048576 /dev/zero | tr '\0' 'x' >"$WORK/www/1m.bin"
cat >"$WORK/backend/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log $WORK/backend/error.log warn;
pid $WORK/backend/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/backend/body;
    proxy_temp_path $WORK/backend/proxy;
    fastcgi_temp_path $WORK/backend/fastcgi;
    uwsgi_temp_path $WORK/backend/uwsgi;
    scgi_temp_path $WORK/backend/scgi;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    default_type application/json;
    server {
        listen 127.0.0.1:$BACKEND_PORT reuseport backlog=4096;
        root $WORK/www;
        location = /upload {
            client_max_body_size 2m;
            client_body_buffer_size 2m;
            return 200 '{"ok":true}';
        }
    }
}
EOF

# --- the nginx proxy -------------------------------------------------------
cat >"$WORK/proxy/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log $WORK/proxy/error.log warn;
pid $WORK/proxy/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/proxy/body;
    proxy_temp_path $WORK/proxy/proxy;
    fastcgi_temp_path $WORK/proxy/fastcgi;
    uwsgi_temp_path $WORK/proxy/uwsgi;
    scgi_temp_path $WORK/proxy/scgi;
    tcp_nodelay on;
    keepalive_requests 1000000;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        client_max_body_size 2m;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_request_buffering off;
            proxy_buffering off;
        }
    }
    server {
        listen 127.0.0.1:$NGINX_WS_PORT backlog=4096;
        location / {
            proxy_pass http://127.0.0.1:$SIM_PORT;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host \$host;
            proxy_read_timeout 300s;
        }
    }
}
EOF

# --- realtime-edge -----------------------------------------------------------
cat >"$WORK/edge/flags.yaml" <<EOF
REALTIME_STREAMING_V2: false
REALTIME_ROLLOUT_PERCENT: 0
EOF
cat >"$WORK/edge/edge.yaml" <<EOF
listen: "127.0.0.1:$EDGE_PORT"
admin_listen: "127.0.0.1:$EDGE_ADMIN_PORT"
upstream:
  base_url: "http://127.0.0.1:$BACKEND_PORT"
auth:
  jwt_secret: "compare-nginx"
flags:
  file: "$WORK/edge/flags.yaml"
EOF

nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend" &
BACKEND_PID=$!
pids+=("$BACKEND_PID")
nginx -c "$WORK/proxy/nginx.conf" -p "$WORK/proxy" &
NGINX_PID=$!
pids+=("$NGINX_PID")
EDGE_PRELOAD=${EDGE_PRELOAD:-}
if [ -n "$EDGE_PRELOAD" ] && [ ! -r "$EDGE_PRELOAD" ]; then
    echo "EDGE_PRELOAD=$EDGE_PRELOAD is not a readable file" >&2
    exit 2
fi
LD_PRELOAD=$EDGE_PRELOAD RUST_LOG=${RUST_LOG:-warn} "$EDGE_BIN" serve --config "$WORK/edge/edge.yaml" 2>"$WORK/edge/stderr.log" &
EDGE_PID=$!
pids+=("$EDGE_PID")
case " $TESTS " in *" ws "*)
    sed -e "s/127.0.0.1:$EDGE_PORT/127.0.0.1:$EDGE_WS_PORT/" \
        -e "s/127.0.0.1:$EDGE_ADMIN_PORT/127.0.0.1:$EDGE_WS_ADMIN_PORT/" \
        -e "s|http://127.0.0.1:$BACKEND_PORT|http://127.0.0.1:$SIM_PORT|" \
        "$WORK/edge/edge.yaml" >"$WORK/edge/edge-ws.yaml"
    RUST_LOG=warn "$EDGE_BIN" simulate --listen "127.0.0.1:$SIM_PORT" --events-per-second 0 >"$WORK/sim.log" 2>&1 &
    SIM_PID=$!
    pids+=("$SIM_PID")
    LD_PRELOAD=$EDGE_PRELOAD RUST_LOG=${RUST_LOG:-warn} "$EDGE_BIN" serve --config "$WORK/edge/edge-ws.yaml" 2>"$WORK/edge/stderr-ws.log" &
    EDGE_WS_PID=$!
    pids+=("$EDGE_WS_PID")
    ;;
esac

wait_up() {
    local url=$1 i
    for i in $(seq 1 100); do
        if wrk -t1 -c1 -d1s "$url" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "not answering: $url" >&2
    exit 1
}
wait_up "http://127.0.0.1:$BACKEND_PORT/small.json"
wait_up "http://127.0.0.1:$NGINX_PORT/small.json"
wait_up "http://127.0.0.1:$EDGE_PORT/small.json"
case " $TESTS " in *" ws "*)
    wait_up "http://127.0.0.1:$SIM_PORT/_sim/echo"
    wait_up "http://127.0.0.1:$EDGE_WS_PORT/_sim/echo"
    ;;
esac

cat >"$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# target name -> port and the pid whose CPU is the proxy's cost
port_of() { case $1 in direct) echo "$BACKEND_PORT" ;; edge) echo "$EDGE_PORT" ;; nginx) echo "$NGINX_PORT" ;; esac; }
pid_of() { case $1 in direct) echo "$BACKEND_PID" ;; edge) echo "$EDGE_PID" ;; nginx) echo "$NGINX_PID" ;; esac; }

RESULTS="$WORK/results.tsv" # round test target req_s p50_ms cpu_us_per_req
WS_RESULTS="$WORK/ws.tsv"   # round target messages p50_us p99_us cpu_us_per_message
: >"$WS_RESULTS"
: >"$RESULTS"
echo "machine: $(nproc) CPUs; load average before: $(loadavg)"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds; realtime-edge allocator: ${EDGE_PRELOAD:-system (glibc)}"

run_one() {
    local round=$1 test=$2 target=$3 port pid url t0 t1 out
    port=$(port_of "$target")
    pid=$(pid_of "$target")
    case $test in
        small) url="http://127.0.0.1:$port/small.json"; extra=() ;;
        get1m) url="http://127.0.0.1:$port/1m.bin"; extra=() ;;
        post1m) url="http://127.0.0.1:$port/upload"; extra=(-s "$WORK/post.lua") ;;
    esac
    t0=$(ticks "$pid")
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "${extra[@]}" "$url")
    t1=$(ticks "$pid")
    echo "$out" | awk -v r="$round" -v test="$test" -v tg="$target" \
        -v dt=$((t1 - t0)) -v hz="$CLK_TCK" '
        function ms(v) {
            if (v ~ /us$/) return v / 1000;
            if (v ~ /ms$/) return v + 0;
            if (v ~ /s$/) return v * 1000;
            return v;
        }
        /^ +50%/ { p50 = ms($2) }
        / requests in / { n = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { bad = $NF }
        /Socket errors:/ { errs = $0 }
        END {
            if (bad > 0) printf "warning: %s via %s: %d non-2xx responses\n", test, tg, bad > "/dev/stderr";
            if (errs != "") printf "note: %s via %s: %s\n", test, tg, errs > "/dev/stderr";
            cpu = (n > 0) ? dt * 1e6 / hz / n : 0;
            printf "%s\t%s\t%s\t%.0f\t%.2f\t%.1f\n", r, test, tg, rps, p50, cpu
        }' >>"$RESULTS"
}

ws_port_of() { case $1 in direct) echo "$SIM_PORT" ;; edge) echo "$EDGE_WS_PORT" ;; nginx) echo "$NGINX_WS_PORT" ;; esac; }
ws_pid_of() { case $1 in direct) echo "$SIM_PID" ;; edge) echo "$EDGE_WS_PID" ;; nginx) echo "$NGINX_PID" ;; esac; }

# One connection, one message in flight: RTT percentiles and the proxy's
# (for "direct": the echo backend's) CPU per message.
run_ws() {
    local round=$1 target=$2 pid t0 t1 out
    pid=$(ws_pid_of "$target")
    t0=$(ticks "$pid")
    out=$("$EDGE_BIN" bench-ws-rtt --url "ws://127.0.0.1:$(ws_port_of "$target")/_sim/ws-echo" --messages "$WS_MESSAGES")
    t1=$(ticks "$pid")
    echo "$out" | awk -v r="$round" -v tg="$target" -v dt=$((t1 - t0)) -v hz="$CLK_TCK" \
        '{ printf "%s\t%s\t%d\t%.1f\t%.1f\t%.1f\n", r, tg, $1, $2, $3, ($1 > 0 ? dt * 1e6 / hz / $1 : 0) }' >>"$WS_RESULTS"
}

# Warm-up: connections open, pools filled, pages faulted in.
for target in direct edge nginx; do
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$(port_of "$target")/small.json" >/dev/null
done

for round in $(seq 1 "$ROUNDS"); do
    echo "round $round: load average $(loadavg)"
    for test in $TESTS; do
        # Rotate the order each round so no target always runs first.
        case $((round % 3)) in
            1) order="direct edge nginx" ;;
            2) order="edge nginx direct" ;;
            0) order="nginx direct edge" ;;
        esac
        if [ "$test" = ws ]; then
            for target in $order; do run_ws "$round" "$target"; done
        else
            for target in $order; do run_one "$round" "$test" "$target"; done
        fi
    done
done
EDGE_RSS=$(rss_kib "$EDGE_PID")
NGINX_RSS=$(rss_kib "$NGINX_PID")
echo "load average after: $(loadavg)"
echo

# Medians over the rounds (and min-max), then the table.
awk -F'\t' -v tests_list="$TESTS" -v edge_rss="$EDGE_RSS" -v nginx_rss="$NGINX_RSS" '
    function median(list,   a, n, i, j, t) {
        n = split(list, a, " ");
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        lo[list] = a[1]; hi[list] = a[n];
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2;
    }
    { k = $2 SUBSEP $3; rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5; cpu[k] = cpu[k] " " $6 }
    END {
        nt = split(tests_list, tests, " ");
        name["small"] = "small JSON (36 B)"; name["get1m"] = "1 MiB GET"; name["post1m"] = "1 MiB POST";
        printf "| test | direct req/s | realtime-edge req/s (min-max) | nginx req/s (min-max) | edge / nginx req/s | p50 edge / nginx | CPU/request edge / nginx | CPU ratio |\n";
        printf "|---|---|---|---|---|---|---|---|\n";
        for (i = 1; i <= nt; i++) {
            t = tests[i];
            if (!(t in name)) continue;   # ws has its own table below
            d = median(rps[t SUBSEP "direct"]);
            er = median(rps[t SUBSEP "edge"]); elo = lo[rps[t SUBSEP "edge"]]; ehi = hi[rps[t SUBSEP "edge"]];
            nr = median(rps[t SUBSEP "nginx"]); nlo = lo[rps[t SUBSEP "nginx"]]; nhi = hi[rps[t SUBSEP "nginx"]];
            ep = median(p50[t SUBSEP "edge"]); np = median(p50[t SUBSEP "nginx"]);
            ec = median(cpu[t SUBSEP "edge"]); nc = median(cpu[t SUBSEP "nginx"]);
            printf "| %s | %d | %d (%d-%d) | %d (%d-%d) | %.2fx | %.2f / %.2f ms | %.1f / %.1f µs | %.2fx |\n",
                name[t], d, er, elo, ehi, nr, nlo, nhi, (nr > 0 ? er / nr : 0), ep, np, ec, nc, (nc > 0 ? ec / nc : 0);
        }
        printf "\nresident memory after the 1 MiB runs: realtime-edge %.1f MiB, nginx %.1f MiB\n", edge_rss / 1024, nginx_rss / 1024;
    }' "$RESULTS"
if [ -s "$WS_RESULTS" ]; then
    echo
    awk -F'\t' '
        function median(list,   a, n, i, j, t) {
            n = split(list, a, " ");
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2;
        }
        { p50[$2] = p50[$2] " " $4; p99[$2] = p99[$2] " " $5; cpu[$2] = cpu[$2] " " $6 }
        END {
            printf "| WebSocket echo, 1 connection | direct p50 / p99 | realtime-edge p50 / p99 | nginx p50 / p99 | p50 edge / nginx | CPU/message edge / nginx | CPU ratio |\n";
            printf "|---|---|---|---|---|---|---|\n";
            ep = median(p50["edge"]); np = median(p50["nginx"]); ec = median(cpu["edge"]); nc = median(cpu["nginx"]);
            printf "| 64 B text, one in flight | %.0f / %.0f µs | %.0f / %.0f µs | %.0f / %.0f µs | %.2fx | %.1f / %.1f µs | %.2fx |\n",
                median(p50["direct"]), median(p99["direct"]), ep, median(p99["edge"]), np, median(p99["nginx"]),
                (np > 0 ? ep / np : 0), ec, nc, (nc > 0 ? ec / nc : 0);
        }' "$WS_RESULTS"
fi
echo
echo "per run (round, test, target, req/s, p50 ms, CPU µs/request):"
cat "$RESULTS"
if [ -s "$WS_RESULTS" ]; then
    echo "WebSocket echo per run (round, target, messages, p50 µs, p99 µs, CPU µs/message):"
    cat "$WS_RESULTS"
fi

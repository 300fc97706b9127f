#!/bin/sh
# Measures the agent's footprint against a real endpoint on loopback and prints each figure
# with the command behind it:
#   - stripped release binary size (agent-only build),
#   - start-to-restart time (spawn -> first call of the restart command),
#   - peak RSS during onboarding (VmHWM) and steady RSS while connected (VmRSS),
#   - wake-ups per idle minute (context switches of all the agent's threads).
# Usage: bench/agent-footprint.sh            (IDLE_SECONDS=60 by default)
# Needs: cargo, openssl (examples/mint-test-jwt.sh signs the test JWT). No root, no network beyond 127.0.0.1.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
idle=${IDLE_SECONDS:-60}
cd "$repo"

echo "# building"
if [ -n "${AGENT_BIN:-}" ]; then
    # A prebuilt agent (e.g. from another target directory); its size is reported as is.
    agent_bin=$AGENT_BIN
    release_size=""
else
    cargo build --quiet --release --no-default-features --features agent --bin onboarding-agent
    release_size=$(stat -c %s "$repo/target/release/onboarding-agent")
    cargo build --quiet --profile release-agent --no-default-features --features agent --bin onboarding-agent
    agent_bin=$repo/target/release-agent/onboarding-agent
    gnu_size=$(stat -c %s "$agent_bin")
    # The static musl build is what constrained VMs should get: no glibc version floor
    # (a bookworm glibc build needs GLIBC_2.34, so not RHEL 8 or Debian 11) and no shared
    # libraries mapped into the agent. Measured when the toolchain has it
    # (`rustup target add x86_64-unknown-linux-musl`, `apt-get install musl-tools`).
    if rustup target list --installed 2>/dev/null | grep -q '^x86_64-unknown-linux-musl$' && command -v musl-gcc >/dev/null; then
        CC_x86_64_unknown_linux_musl=musl-gcc cargo build --quiet --profile release-agent \
            --target x86_64-unknown-linux-musl --no-default-features --features agent --bin onboarding-agent
        agent_bin=$repo/target/x86_64-unknown-linux-musl/release-agent/onboarding-agent
        musl_size=$(stat -c %s "$agent_bin")
    fi
fi
cargo build --quiet --bin onboarding-endpoint
endpoint_bin=$repo/target/debug/onboarding-endpoint

work=$(mktemp -d)
ep_pid=""
agent_pid=""
cleanup() {
    [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
    [ -n "$ep_pid" ] && kill "$ep_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# The quickstart's endpoint, on a free port, with a keep-alive interval longer than the idle
# window (so that any wake-up counted is one the agent should not have had).
cp -r examples/quickstart/config "$work/config"
cp testdata/jwt/jwks.json "$work/jwks.json"
sed -e 's/^listen: .*/listen: 127.0.0.1:0/' \
    -e 's/^  keepAliveInterval: .*/  keepAliveInterval: 10m\n  keepAliveTimeout: 30m/' \
    examples/quickstart/endpoint.yaml > "$work/endpoint.yaml"
(cd "$work" && exec "$endpoint_bin" serve --dev --config endpoint.yaml > endpoint.out 2> endpoint.err) &
ep_pid=$!
i=0
until grep -q '^onboarding-endpoint listening on ' "$work/endpoint.out" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then echo "endpoint did not start:"; cat "$work/endpoint.err"; exit 1; fi
    sleep 0.1
done
line=$(grep '^onboarding-endpoint listening on ' "$work/endpoint.out")
url=$(echo "$line" | awk '{print $4}')
port=${url##*:}
plane_uid=$(echo "$line" | sed 's/.*plane-uid=//; s/ .*//')
ca=$(grep '^dev CA: ' "$work/endpoint.out" | sed 's/^dev CA: //')
case "$ca" in /*) ;; *) ca="$work/$ca" ;; esac

examples/mint-test-jwt.sh bench-vm "$plane_uid" > "$work/jwt"

mkdir -p "$work/agent" "$work/root/etc"
cat > "$work/agent/onboarding.config.yaml" <<EOF
onboardingEndpoint:
  host: 127.0.0.1
  port: $port
  transportSecurity: {tls: {caFile: $ca}}
workloadGroup: {namespace: bookinfo, name: ratings}
EOF
cat > "$work/agent/agent.config.yaml" <<EOF
host:
  custom:
    credential: [{file: $work/jwt}]
    hostinfo: {basic: {networkInterfaces: {include: ['^lo\$']}}}
EOF
cat > "$work/restart.sh" <<EOF
#!/bin/sh
date +%s%N >> $work/restarts.log
EOF
chmod +x "$work/restart.sh"

start=$(date +%s%N)
ONBOARDING_AGENT_LOG=warn "$agent_bin" \
    --onboarding-config "$work/agent/onboarding.config.yaml" \
    --agent-config "$work/agent/agent.config.yaml" \
    --root "$work/root" --state-file "$work/state.json" \
    --restart-command "$work/restart.sh" 2> "$work/agent.err" &
agent_pid=$!
i=0
until [ -s "$work/restarts.log" ]; do
    i=$((i + 1))
    if [ $i -gt 3000 ]; then echo "agent never restarted the sidecar:"; cat "$work/agent.err"; exit 1; fi
    sleep 0.01
done
restarted=$(head -n 1 "$work/restarts.log")
until grep -q '"phase": "connected"' "$work/state.json" 2>/dev/null; do sleep 0.05; done

status_kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$agent_pid/status"; }
switches() {
    cat /proc/"$agent_pid"/task/*/status |
        awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ {n += $2} END {print n}'
}
sleep 1
peak=$(status_kb VmHWM)
steady=$(status_kb VmRSS)
rss_file=$(status_kb RssFile)
rss_anon=$(status_kb RssAnon)
threads=$(ls /proc/"$agent_pid"/task | wc -l)
before=$(switches)
sleep "$idle"
after=$(switches)
steady_after=$(status_kb VmRSS)
size=$(stat -c %s "$agent_bin")

echo
mib() { awk -v b="$1" 'BEGIN {printf "%.2f", b / 1048576}'; }
echo "measured binary: $agent_bin"
if [ -n "${musl_size:-}" ]; then
    echo "binary size (stripped, static musl, profile release-agent): $musl_size bytes ($(mib "$musl_size") MiB)"
    echo "    CC_x86_64_unknown_linux_musl=musl-gcc cargo build --profile release-agent --target x86_64-unknown-linux-musl --no-default-features --features agent --bin onboarding-agent"
fi
if [ -n "${gnu_size:-}" ]; then
    echo "binary size (stripped, glibc, profile release-agent: opt-level s, panic abort): $gnu_size bytes ($(mib "$gnu_size") MiB)"
    echo "    cargo build --profile release-agent --no-default-features --features agent --bin onboarding-agent && stat -c %s target/release-agent/onboarding-agent"
elif [ -z "${musl_size:-}" ]; then
    echo "binary size (stripped, as given in AGENT_BIN): $size bytes ($(mib "$size") MiB)"
fi
if [ -n "$release_size" ]; then
    echo "binary size (stripped, profile release): $release_size bytes ($(mib "$release_size") MiB)"
    echo "    cargo build --release --no-default-features --features agent --bin onboarding-agent && stat -c %s target/release/onboarding-agent"
fi
echo "start-to-restart on loopback: $(( (restarted - start) / 1000000 )) ms"
echo "    time from spawning the agent to the first line its restart script writes"
echo "peak RSS during onboarding: $peak kB"
echo "    VmHWM in /proc/<pid>/status once connected"
echo "steady RSS while connected: $steady kB (after ${idle}s idle: $steady_after kB)"
echo "    VmRSS in /proc/<pid>/status; of it file-backed (binary and libraries) $rss_file kB, anonymous (heap, stacks) $rss_anon kB (RssFile, RssAnon)"
echo "wake-ups during ${idle}s idle (no keep-alive due): $((after - before)) across $threads threads"
echo "    sum of voluntary_ctxt_switches + nonvoluntary_ctxt_switches over /proc/<pid>/task/*/status, before and after"

kill -TERM "$agent_pid"
wait "$agent_pid" || true
agent_pid=""

#!/bin/sh
# The quickstart: the onboarding endpoint and the agent end to end on this machine, with no
# cluster, no root and no systemd.
#   - the endpoint: embedded file store with examples/quickstart/config (a WorkloadGroup, an
#     OnboardingPolicy, a Sidecar, the mesh config and root certificate), a self-signed
#     development certificate (serve --dev), JWTs from the test issuer;
#   - the agent: a JWT file as its credential, its root prefix in a temporary directory, the
#     sidecar restart pointed at a script that records the call.
# Then it prints the WAR table, the files the sidecar reads (links into the agent's current
# generation), the agent's hosts block and its status.
# Everything stays under $QUICKSTART_DIR (default: a new temporary directory) for inspection.
# Needs: cargo, openssl (to sign the test JWT). Network: 127.0.0.1 only.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
echo "== building the endpoint and the agent (debug build; takes a few minutes the first time)"
# cargo's own progress (Compiling ..., the progress bar on a terminal) goes to stderr.
cargo build --bin onboarding-endpoint --bin onboarding-agent
target=${CARGO_TARGET_DIR:-$repo/target}
endpoint=$target/debug/onboarding-endpoint
agent=$target/debug/onboarding-agent

work=${QUICKSTART_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/onboarding-quickstart.XXXXXX")}
mkdir -p "$work"
ep_pid=""
agent_pid=""
stop() {
    [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
    [ -n "$ep_pid" ] && kill "$ep_pid" 2>/dev/null && wait "$ep_pid" 2>/dev/null || true
}
trap stop EXIT INT TERM

echo "== starting the endpoint in $work/endpoint"
mkdir -p "$work/endpoint"
cp -r examples/quickstart/config "$work/endpoint/"
cp testdata/jwt/jwks.json "$work/endpoint/"
# A free port instead of 15443, so the quickstart runs next to anything else.
sed 's/^listen: .*/listen: 127.0.0.1:0/' examples/quickstart/endpoint.yaml > "$work/endpoint/endpoint.yaml"
(cd "$work/endpoint" && exec "$endpoint" serve --dev --config endpoint.yaml > stdout.log 2> endpoint.log) &
ep_pid=$!
i=0
until grep -q '^onboarding-endpoint listening on ' "$work/endpoint/stdout.log" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 300 ] || ! kill -0 "$ep_pid" 2>/dev/null; then
        echo "the endpoint did not start:"; cat "$work/endpoint/endpoint.log"; exit 1
    fi
    sleep 0.1
done
line=$(grep '^onboarding-endpoint listening on ' "$work/endpoint/stdout.log")
echo "$line"
url=$(echo "$line" | awk '{print $4}')
port=${url##*:}
plane_uid=$(echo "$line" | sed 's/.*plane-uid=//; s/ .*//')
ca=$(grep '^dev CA: ' "$work/endpoint/stdout.log" | sed 's/^dev CA: //')
case "$ca" in /*) ;; *) ca="$work/endpoint/$ca" ;; esac

echo "== configuring the agent in $work/agent (root prefix $work/root)"
mkdir -p "$work/agent" "$work/root/etc"
printf '127.0.0.1 localhost\n' > "$work/root/etc/hosts"
# The VM's identity: a JWT from the test issuer, addressed to this plane (its UID).
examples/mint-test-jwt.sh vm-0001 "$plane_uid" > "$work/agent/jwt"
chmod 600 "$work/agent/jwt"
cat > "$work/agent/onboarding.config.yaml" <<EOF
apiVersion: config.agent.onboarding.tetrate.io/v1alpha1
kind: OnboardingConfiguration
onboardingEndpoint:
  host: 127.0.0.1
  port: $port
  transportSecurity:
    tls: {caFile: $ca}
workloadGroup:
  namespace: bookinfo
  name: ratings
workload:
  labels: {version: v1}
EOF
cat > "$work/agent/agent.config.yaml" <<EOF
apiVersion: config.agent.onboarding.tetrate.io/v1alpha1
kind: AgentConfiguration
host:
  custom:
    credential:
    - file: $work/agent/jwt
    hostinfo:
      basic:
        # Loopback only for this one-machine demo; a VM reports its real interfaces.
        networkInterfaces: {include: ['^lo\$']}
EOF
cat > "$work/agent/restart-sidecar.sh" <<EOF
#!/bin/sh
# Stands in for: systemctl restart istio-sidecar.service
echo "\$(date -u +%Y-%m-%dT%H:%M:%SZ) istio-sidecar restarted" >> $work/agent/sidecar-restarts.log
EOF
chmod +x "$work/agent/restart-sidecar.sh"

echo "== starting the agent"
"$agent" \
    --onboarding-config "$work/agent/onboarding.config.yaml" \
    --agent-config "$work/agent/agent.config.yaml" \
    --root "$work/root" \
    --state-file "$work/agent/state.json" \
    --restart-command "$work/agent/restart-sidecar.sh" 2> "$work/agent/agent.log" &
agent_pid=$!
i=0
until grep -q '"phase": "connected"' "$work/agent/state.json" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 300 ] || ! kill -0 "$agent_pid" 2>/dev/null; then
        echo "the agent did not connect:"; cat "$work/agent/agent.log"; exit 1
    fi
    sleep 0.1
done
cat "$work/agent/agent.log"
# Let the first keep-alive mark the agent connected on the endpoint's side too.
i=0
until "$endpoint" get war -A --config "$work/endpoint/endpoint.yaml" 2>/dev/null | grep -q ' True '; do
    i=$((i + 1))
    [ $i -gt 200 ] && break
    sleep 0.1
done

echo
echo "== onboarding-endpoint get war -A"
"$endpoint" get war -A --config "$work/endpoint/endpoint.yaml"
echo
echo "== files the sidecar reads (under the root prefix $work/root)"
# Each path is a link into the current generation of the set, which the agent switches in
# one rename; mode and owner shown are those of the file the link leads to.
(cd "$work/root" && find . -type l ! -path './var/lib/onboarding-agent/*' | sort | while read -r l; do
    printf '%s  %-8s %s\n     -> %s\n' "$(stat -L -c '%a' "$l")" "$(stat -L -c '%U' "$l")" \
        "/${l#./}" "$(readlink "$l")"
done)
echo "current generation: $(readlink "$work/root/var/lib/onboarding-agent/bootstrap/current")"
echo "other files the agent wrote: /etc/hosts (its block), $work/agent/state.json"
echo
echo "== /var/lib/istio/envoy/cluster.env"
cat "$work/root/var/lib/istio/envoy/cluster.env"
echo
echo "== /etc/hosts"
cat "$work/root/etc/hosts"
echo
echo "== sidecar restarts"
cat "$work/agent/sidecar-restarts.log"
echo
echo "== onboarding-agent status"
"$agent" status --state-file "$work/agent/state.json"
echo
echo "== stopping the agent (SIGTERM: it unregisters, then waits the propagation delay)"
kill -TERM "$agent_pid"
wait "$agent_pid" || true
agent_pid=""
tail -n 3 "$work/agent/agent.log"
"$endpoint" get war -A --config "$work/endpoint/endpoint.yaml"
echo
echo "Everything is in $work"

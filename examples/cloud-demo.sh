#!/bin/sh
# The cloud demo: an "EC2 instance" onboards on this machine. cloud-metadata-simulator plays
# the instance metadata service (IMDSv2, identity document signed by a test "AWS region"
# certificate); the endpoint trusts that certificate for us-east-2 (what --write-trust wrote)
# and binds the document to the connection (the simulated privateIp is 127.0.0.1); the agent
# runs with host: aws: ec2 and ONBOARDING_AGENT_AWS_IMDS pointing at the simulator.
# Then it shows a replay of the same document being refused while the agent is connected.
# Everything stays under $DEMO_DIR (default: a new temporary directory). Needs: cargo, curl,
# python3 (to build one JSON body).
# Network: 127.0.0.1 only. The keys in testdata/cloud-sim protect nothing: demo only.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
echo "== building"
cargo build --quiet --bin onboarding-endpoint --bin onboarding-agent --bin cloud-metadata-simulator
bin=$repo/target/debug

work=${DEMO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/onboarding-cloud-demo.XXXXXX")}
mkdir -p "$work"
pids=""
stop() { for p in $pids; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

wait_for() { # file pattern what pid
    i=0
    until grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 300 ] || ! kill -0 "$4" 2>/dev/null; then echo "$3 did not come up"; exit 1; fi
        sleep 0.1
    done
}

echo "== the instance metadata simulator"
"$bin/cloud-metadata-simulator" --keys testdata/cloud-sim --write-trust "$work/trust" > "$work/sim.out" 2> "$work/sim.log" &
pids="$pids $!"
wait_for "$work/sim.out" '^http://' "the simulator" "$!"
imds=$(head -n 1 "$work/sim.out")
echo "IMDS at $imds; trust material in $work/trust"

echo "== the endpoint in $work/endpoint"
mkdir -p "$work/endpoint"
cp -r examples/quickstart/config "$work/endpoint/"
cp testdata/jwt/jwks.json "$work/endpoint/"
cat > "$work/endpoint/config/aws-policy.yaml" <<EOF
apiVersion: authorization.onboarding.tetrate.io/v1alpha1
kind: OnboardingPolicy
metadata: {name: allow-ec2, namespace: bookinfo}
spec:
  allow:
  - workloads:
    - aws: {accounts: ["123456789012"], regions: [us-east-2], ec2: {}}
    onboardTo:
    - workloadGroupSelector: {matchLabels: {app: ratings}}
EOF
sed 's/^listen: .*/listen: 127.0.0.1:0/' examples/quickstart/endpoint.yaml > "$work/endpoint/endpoint.yaml"
sed -i "s|^authentication:|authentication:\n  aws:\n    ec2:\n      certificates: [{region: us-east-2, file: $work/trust/aws-rsa2048-us-east-2.pem}]|" "$work/endpoint/endpoint.yaml"
(cd "$work/endpoint" && exec "$bin/onboarding-endpoint" serve --dev --config endpoint.yaml > stdout.log 2> endpoint.log) &
ep_pid=$!
pids="$pids $ep_pid"
wait_for "$work/endpoint/stdout.log" '^onboarding-endpoint listening on ' "the endpoint" "$ep_pid"
line=$(grep '^onboarding-endpoint listening on ' "$work/endpoint/stdout.log")
echo "$line"
url=$(echo "$line" | awk '{print $4}')
ca=$(grep '^dev CA: ' "$work/endpoint/stdout.log" | sed 's/^dev CA: //')
case "$ca" in /*) ;; *) ca="$work/endpoint/$ca" ;; esac

echo "== the agent (host: aws: ec2)"
mkdir -p "$work/agent" "$work/root/etc"
printf '127.0.0.1 localhost\n' > "$work/root/etc/hosts"
cat > "$work/agent/onboarding.config.yaml" <<EOF
onboardingEndpoint:
  host: 127.0.0.1
  port: ${url##*:}
  transportSecurity:
    tls: {caFile: $ca}
workloadGroup: {namespace: bookinfo, name: ratings}
EOF
printf 'host:\n  aws:\n    ec2: {}\n' > "$work/agent/agent.config.yaml"
printf '#!/bin/sh\necho istio-sidecar restarted >> %s/agent/sidecar-restarts.log\n' "$work" > "$work/agent/restart-sidecar.sh"
chmod +x "$work/agent/restart-sidecar.sh"
ONBOARDING_AGENT_AWS_IMDS=$imds "$bin/onboarding-agent" \
    --onboarding-config "$work/agent/onboarding.config.yaml" \
    --agent-config "$work/agent/agent.config.yaml" \
    --root "$work/root" --state-file "$work/agent/state.json" \
    --restart-command "$work/agent/restart-sidecar.sh" 2> "$work/agent/agent.log" &
agent_pid=$!
pids="$agent_pid $pids"
wait_for "$work/agent/state.json" '"phase": "connected"' "the agent" "$agent_pid"
cat "$work/agent/agent.log"
echo
"$bin/onboarding-endpoint" get war -A --config "$work/endpoint/endpoint.yaml"

echo
echo "== replaying the instance's document from another process while the agent is connected"
token=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$imds/latest/api/token")
doc=$(curl -s -H "X-aws-ec2-metadata-token: $token" "$imds/latest/dynamic/instance-identity/document")
sig=$(curl -s -H "X-aws-ec2-metadata-token: $token" "$imds/latest/dynamic/instance-identity/rsa2048")
python3 -c 'import json,sys; print(json.dumps({"workloadGroup":{"namespace":"bookinfo","name":"ratings"},"credential":{"type":"aws-ec2","document":sys.argv[1],"rsa2048":sys.argv[2]}}))' "$doc" "$sig" > "$work/replay.json"
curl -s --cacert "$ca" -H 'content-type: application/json' --data @"$work/replay.json" "$url/v1/authorize"
echo
grep 'second concurrent session refused' "$work/endpoint/endpoint.log" | tail -n 1 || true

echo
echo "== stopping the agent (it unregisters)"
kill -TERM "$agent_pid"
wait "$agent_pid" || true
tail -n 2 "$work/agent/agent.log"
echo "Everything is in $work"

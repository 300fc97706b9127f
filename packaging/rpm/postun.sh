# onboarding-agent %postun ($1: 0 on erase, 1 on upgrade), as %systemd_postun_with_restart:
# reload systemd; on upgrade restart a running agent on the new binary. On erase, remove
# what the agent created at run time (its state, which holds the istio-token, its links at
# the sidecar's paths where they still point into it, its /etc/hosts block); RPM itself
# keeps edited %config(noreplace) files as .rpmsave.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ]; then
    systemctl try-restart onboarding-agent.service >/dev/null 2>&1 || :
fi
if [ "$1" -eq 0 ]; then
    for link in /var/lib/istio/envoy/cluster.env /etc/istio/config/mesh \
                /etc/certs/root-cert.pem /var/run/secrets/tokens/istio-token; do
        if [ -L "$link" ]; then
            case "$(readlink "$link")" in
                /var/lib/onboarding-agent/*) rm -f "$link" ;;
            esac
        fi
    done
    rm -rf /var/lib/onboarding-agent
    if [ -f /etc/hosts ] && grep -q '^# BEGIN onboarding-agent' /etc/hosts \
        && grep -q '^# END onboarding-agent' /etc/hosts; then
        tmp=$(mktemp /etc/hosts.onboarding-agent.XXXXXX)
        sed '/^# BEGIN onboarding-agent/,/^# END onboarding-agent/d' /etc/hosts > "$tmp"
        chmod --reference=/etc/hosts "$tmp"
        mv "$tmp" /etc/hosts
    fi
fi

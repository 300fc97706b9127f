# onboarding-agent %post ($1: 1 on install, 2 on upgrade). What systemd's %systemd_post
# macro does, spelled out (cargo-generate-rpm has no macros): reload systemd so it sees the
# unit, and apply the preset on first install (RHEL's default preset leaves it disabled:
# the administrator enables it once /etc/onboarding-agent/onboarding.config.yaml exists).
# The agent runs as root (packaging/README.md says why): no system user to create.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset onboarding-agent.service >/dev/null 2>&1 || :
fi

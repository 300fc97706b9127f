# onboarding-agent %preun ($1: 0 on erase, 1 on upgrade), as %systemd_preun: on erase, stop
# the agent (it unregisters this host first) and disable the unit.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now onboarding-agent.service >/dev/null 2>&1 || :
fi

systemd-sysusers hbr-source-agent.conf || :
systemd-tmpfiles --create hbr-source-agent.conf || :
systemctl daemon-reload || :
if [ "$1" -gt 1 ]; then systemctl try-restart hbr-source-agent.service || :; fi

if [ "$1" -eq 0 ]; then systemctl disable --now hbr-source-agent.service || :; fi

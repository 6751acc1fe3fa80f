systemctl daemon-reload || :

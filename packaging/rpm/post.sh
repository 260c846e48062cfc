# enipeer %post. $1 is the number of installed instances afterwards: 1 on a first install,
# 2 on an upgrade. Enable on first install but do not start: the config and key come first.
if [ "$1" -eq 1 ]; then
    if command -v systemctl >/dev/null 2>&1; then
        # Works offline (it only creates the WantedBy symlink).
        systemctl --no-reload enable enipeer.service >/dev/null 2>&1 || :
    fi
    cat <<'MSG'

enipeer is installed and enabled, but not started. Before starting it:
  1. edit /etc/enipeer/enipeer.toml (commented example: /usr/share/doc/enipeer/enipeer.toml.example)
  2. create the heartbeat key once and copy it to the peer (mode 0600):
       enipeer keygen /etc/enipeer/peer.key
  3. give the instances' IAM role /usr/share/doc/enipeer/iam-policy.json
  4. enipeer check -c /etc/enipeer/enipeer.toml
  5. systemctl start enipeer && enipeer role

MSG
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0

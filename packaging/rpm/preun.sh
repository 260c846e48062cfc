# enipeer %preun. $1 is 0 when the package is being erased, 1 on an upgrade (the new version's
# %postun restarts the daemon then, keeping the ENI where it is).
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ] && systemctl --quiet is-active enipeer.service; then
        # On the master, hand the ENI to the peer first rather than make it wait out
        # stop.restart-grace. Fails harmlessly on a backup or without a live peer.
        enipeer yield --timeout 20s >/dev/null 2>&1 || :
    fi
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --no-reload disable enipeer.service >/dev/null 2>&1 || :
        if [ -d /run/systemd/system ]; then
            systemctl stop enipeer.service >/dev/null 2>&1 || :
        fi
    fi
fi
exit 0

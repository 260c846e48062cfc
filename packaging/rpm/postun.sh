# enipeer %postun. $1 is 0 after an erase, 1 after an upgrade. rpm keeps a modified
# /etc/enipeer/enipeer.toml as enipeer.toml.rpmsave on erase (rpm has no purge), and never
# touches the key.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        # Restart only if it was running; a running master keeps the ENI across the restart.
        systemctl try-restart enipeer.service >/dev/null 2>&1 || :
    fi
fi
if [ "$1" -eq 0 ]; then
    # cargo-generate-rpm cannot declare directories, so the package does not own these; remove
    # them once empty (a kept enipeer.toml.rpmsave or key keeps /etc/enipeer).
    rmdir /usr/share/doc/enipeer /etc/enipeer 2>/dev/null || :
fi
exit 0

# hybrid-gateway %preun. $1 = instances left after this transaction: 0 = removal,
# >= 1 = upgrade (the new version's files are already in place; nothing to do here).
if [ "$1" -eq 0 ]; then
    # Tells the daemon this stop is final (not a restart): with
    # aws.cleanup_on_shutdown = true it then deletes its VPC routes before exiting.
    if [ -d /run/hybrid-gateway ]; then
        touch /run/hybrid-gateway/final-stop
    fi
    if [ -d /run/systemd/system ]; then
        # Final stop: with aws.cleanup_on_shutdown = true the daemon deletes its VPC routes.
        systemctl --no-reload disable --now hybrid-gateway.service >/dev/null 2>&1 || :
    else
        systemctl --no-reload disable hybrid-gateway.service >/dev/null 2>&1 || :
        echo "hybrid-gateway: systemd is not running: skipped stop; unit disabled"
    fi
fi

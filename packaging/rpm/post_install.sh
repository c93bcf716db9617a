# hybrid-gateway %post. $1 = number of instances installed after this transaction:
# 1 = first install, >= 2 = upgrade.
# The system user (the unit runs as it, with only CAP_NET_ADMIN).
if [ -x /usr/bin/systemd-sysusers ]; then
    systemd-sysusers /usr/lib/sysusers.d/hybrid-gateway.conf || :
elif ! getent passwd hybrid-gateway >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/hybrid-gateway --no-create-home \
        --shell /sbin/nologin --comment "hybrid-gateway daemon" hybrid-gateway || :
fi
if [ "$1" -eq 1 ]; then
    # Enable for the next boot but never start an unconfigured service. (--no-reload: also
    # works in an image build or container where systemd is not running.)
    systemctl --no-reload enable hybrid-gateway.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        echo "hybrid-gateway: installed and enabled, not started. Edit /etc/hybrid-gateway/config.toml, check it with 'hybrid-gateway check-config /etc/hybrid-gateway/config.toml', then run 'systemctl start hybrid-gateway'"
    fi
else
    echo "hybrid-gateway: systemd is not running: skipped daemon-reload (unit enabled for the next boot)"
fi

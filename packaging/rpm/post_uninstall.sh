# hybrid-gateway %postun. $1 = instances left: 0 = removal, >= 1 = upgrade.
# On upgrade the running daemon is restarted on the new binary (try-restart: only if it was
# running; it adopts its VXLAN device, so no traffic is lost). RPM has no purge: an edited
# /etc/hybrid-gateway/config.toml is kept as config.toml.rpmsave.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart hybrid-gateway.service >/dev/null 2>&1 || :
    fi
elif [ "$1" -ge 1 ]; then
    echo "hybrid-gateway: systemd is not running: skipped daemon-reload and try-restart"
else
    echo "hybrid-gateway: systemd is not running: skipped daemon-reload"
fi
# Final removal (RPM has no purge): the packet filter, kept across restarts and upgrades on
# purpose, goes with the package. Only our own table is touched.
if [ "$1" -eq 0 ] && command -v nft >/dev/null 2>&1 && nft list table ip hybrid_gateway >/dev/null 2>&1; then
    nft delete table ip hybrid_gateway && echo "hybrid-gateway: deleted nftables table ip hybrid_gateway"
fi

#!/bin/sh
# Boots a simulated VM: what a container must do before systemd can run as
# PID 1 without --privileged (which these machines refuse).
set -eu

# Docker mounts /sys and the cgroup hierarchies read-only; systemd and the
# nested engine write to them.
mount -o remount,rw /sys
awk '$2 ~ "^/sys/fs/cgroup" {print $2}' /proc/mounts | while read -r m; do
    mount -o remount,bind,rw "$m" 2>/dev/null || true
done

# Units that raise their file limit to "infinity" fail without
# CAP_SYS_RESOURCE: cap them at the limit this container was given.
limit() { v="$(ulimit -H "$1")"; [ "$v" = unlimited ] && echo infinity || echo "$v"; }
for unit in docker containerd; do
    mkdir -p "/etc/systemd/system/$unit.service.d"
    printf '[Service]\nLimitNOFILE=%s\nLimitNPROC=%s\nLimitCORE=%s\n' "$(limit -n)" "$(limit -u)" "$(limit -c)" \
        > "/etc/systemd/system/$unit.service.d/simulated-vm.conf"
done

# The login key, mounted read-only by the proof at /etc/node-key/authorized_keys.
install -d -o admin -g admin -m 0700 /home/admin/.ssh
install -o admin -g admin -m 0600 /etc/node-key/authorized_keys /home/admin/.ssh/authorized_keys

# Host keys per node, as on first boot.
ssh-keygen -A >/dev/null

exec /lib/systemd/systemd

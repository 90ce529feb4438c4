"""The initramfs /init (busybox sh). __MODULES__ is replaced at build time."""

INIT_SH = r"""#!/bin/sh
# Corral initramfs /init: load virtio modules, mount the ext4 root, exec the agent.
fail() { echo "corral-init: $*" >/dev/console; exit 1; }
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
echo "corral-init: start" >/dev/console
for m in __MODULES__; do insmod "/lib/modules/$m.ko" || fail "insmod $m"; done
n=0
while [ ! -b /dev/vda ]; do
  n=$((n + 1)); [ $n -gt 1000 ] && fail "no /dev/vda"
  usleep 10000
done
mount -t ext4 -o noatime /dev/vda /newroot || fail "mount root"
IP= GW= HN=corral
for a in $(cat /proc/cmdline); do
  case "$a" in
    corral.ip=*) IP="${a#corral.ip=}" ;;
    corral.gw=*) GW="${a#corral.gw=}" ;;
    corral.hostname=*) HN="${a#corral.hostname=}" ;;
  esac
done
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  # IPv4 only (the host bridge drops IPv6); the link is up even without an
  # address, so a template's clones change MAC/IP without a down/up cycle.
  echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6
  ip link set eth0 up || fail "eth0 up"
fi
if [ -n "$IP" ]; then
  ip addr add "$IP" dev eth0 || fail "ip $IP"
  [ -n "$GW" ] && { ip route add default via "$GW" || fail "gw $GW"; }
fi
hostname "$HN"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
mount -t tmpfs -o mode=755 run /newroot/run
echo "corral-init: root mounted" >/newroot/dev/console
R=/opt/corral/runtime
if [ -x /newroot$R/bin/python3.11 ]; then  # an imported image: the agent's own Python
  exec switch_root /newroot $R/lib/ld-linux-x86-64.so.2 --library-path $R/lib \
    $R/bin/python3.11 -S -E /opt/corral/guest/agent.py
fi
exec switch_root /newroot /usr/bin/python3 -S -E /opt/corral/guest/agent.py
"""

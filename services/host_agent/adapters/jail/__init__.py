"""The jail every VM runs in: its own uid/gid, mount namespace and root,
no privileges, QEMU's seccomp sandbox, a cgroup with limits (see
docs/security.md)."""

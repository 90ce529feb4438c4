"""The Corral guest agent: PID 1 inside every VM (stdlib only).

Inside the guest these modules sit side by side in /opt/corral/guest and run
as a script; on the host they are the package `guest` (the protocol is shared).
"""

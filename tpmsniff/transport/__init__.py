"""Transport: the only code with sockets. Listeners, upstream connections, the relay, the
QEMU control channel with fd passing, endpoint checks and sd_notify."""

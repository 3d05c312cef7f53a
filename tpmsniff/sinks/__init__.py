"""Independent consumers of the frame stream: console, pcapng, JSON Lines."""

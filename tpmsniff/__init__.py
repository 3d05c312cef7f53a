"""tpmsniff: a live TPM bus sniffing proxy for swtpm."""

__version__ = "0.1.0"

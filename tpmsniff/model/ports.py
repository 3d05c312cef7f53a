"""The TCP ports of tpmsniff's synthetic capture streams (docs/pcapng.md).

Shared by the pcapng writer and the offline readers, which use them to tell the TPM side
of a stream from the client side.
"""

TPM_PORT = 2321  # Wireshark's TPM 2.0 dissector claims it
CTRL_PORT = 2326  # swtpm control channel; the TPM dissector leaves it alone

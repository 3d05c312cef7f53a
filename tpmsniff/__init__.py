"""tpmsniff: a live TPM bus sniffing proxy for swtpm."""

import os

__version__ = "0.1.0"

# tpm2-tss (under tpm2-pytss) logs every structure it cannot unmarshal ("count too big")
# straight to fd 2. Guests and damaged captures send such structures; tpmsniff reports
# them itself, in one line. TSS2_LOG set by the user still wins.
os.environ.setdefault("TSS2_LOG", "all+NONE")

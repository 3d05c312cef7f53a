"""Wireshark add-ons, shipped as package data so an installed tpmsniff carries them:
tpmsniff.lua (a post-dissector turning each frame's comment into tpmsniff.* fields) and
tpmsniff.colorfilters (PLAINTEXT and WEAK colouring rules). Install: docs/pcapng.md."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
LUA = HERE / "tpmsniff.lua"
COLORFILTERS = HERE / "tpmsniff.colorfilters"

"""Offline inputs: pcap/pcapng with TCP reassembly, swtpm logs, and the replay driver."""

from .detect import FORMATS, InputError, detect_format
from .replay import PartialInput, Replayed, frames_from_input, replay, replay_frames

__all__ = [
    "FORMATS",
    "InputError",
    "PartialInput",
    "Replayed",
    "detect_format",
    "frames_from_input",
    "replay",
    "replay_frames",
]

"""Pure data shared by every layer: frames, events, connections, ports, interfaces.

Imports nothing of tpmsniff's outside this package (see docs/architecture.md).
"""

from .attributes import SESSION_ATTRIBUTES, attrs_text
from .events import ConnInfo, Event, Message
from .fields import Field, Fields, Kind
from .frame import (
    NO_PARAM,
    TPM_RS_PW,
    Channel,
    CtrlInfo,
    Direction,
    Frame,
    Framing,
    Param,
    Session,
    SessionFacts,
    TpmInfo,
    Verdict,
)
from .interfaces import EventSink, FrameConsumer
from .ports import CTRL_PORT, TPM_PORT

__all__ = [
    "CTRL_PORT",
    "NO_PARAM",
    "SESSION_ATTRIBUTES",
    "TPM_PORT",
    "TPM_RS_PW",
    "Channel",
    "ConnInfo",
    "CtrlInfo",
    "Direction",
    "Event",
    "EventSink",
    "Field",
    "Fields",
    "Frame",
    "FrameConsumer",
    "Framing",
    "Kind",
    "Message",
    "Param",
    "Session",
    "SessionFacts",
    "TpmInfo",
    "Verdict",
    "attrs_text",
]

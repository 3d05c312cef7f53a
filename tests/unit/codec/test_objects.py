"""Key provenance through ContextSave/ContextLoad (codec/sessions/objects.py)."""

from __future__ import annotations

from tpmsniff.codec.sessions.objects import MAX_CONTEXTS, ObjectBook


def test_a_reloaded_key_keeps_its_origin_at_its_new_handle():
    b = ObjectBook()
    b.loaded(0x80000000, "primary key in owner hierarchy")
    b.saved(0x80000000, b"blob-1")
    b.flushed(0x80000000)
    assert b.origin(0x80000000) == "key 0x80000000 (origin unseen)"
    b.context_loaded(0x80000002, b"blob-1")
    assert b.origin(0x80000002) == "primary key in owner hierarchy, context-loaded"
    b.saved(0x80000002, b"blob-2")  # saved again after use, reloaded again: one suffix
    b.context_loaded(0x80000001, b"blob-2")
    assert b.origin(0x80000001) == "primary key in owner hierarchy, context-loaded"
    b.context_loaded(0x80000003, b"blob-1")  # an object context loads more than once
    assert b.origin(0x80000003) == "primary key in owner hierarchy, context-loaded"


def test_unseen_contexts_and_bounds():
    b = ObjectBook()
    b.context_loaded(0x80000000, b"never-saved")
    assert b.origin(0x80000000) == "context-loaded key (origin unseen)"
    b.saved(0x80000005, b"unknown object")  # nothing known: nothing remembered
    b.context_loaded(0x80000006, b"unknown object")
    assert b.origin(0x80000006) == "context-loaded key (origin unseen)"
    b.loaded(0x80000001, "external key (LoadExternal)")
    for i in range(MAX_CONTEXTS + 1):
        b.saved(0x80000001, i.to_bytes(4, "big"))
    b.context_loaded(0x80000002, (0).to_bytes(4, "big"))  # the oldest was forgotten
    assert b.origin(0x80000002) == "context-loaded key (origin unseen)"
    b.context_loaded(0x80000002, MAX_CONTEXTS.to_bytes(4, "big"))
    assert b.origin(0x80000002) == "external key (LoadExternal), context-loaded"
    assert b.origin(0x81010001) == "EK 0x81010001 (persistent)"

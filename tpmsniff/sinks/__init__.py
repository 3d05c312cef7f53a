"""Sinks: independent consumers of one frame stream (console, pcapng, JSON Lines, live check).

Each implements `model.FrameConsumer` (usually by subclassing `BaseSink`); the pipeline
calls them in order and isolates their failures. A sink never calls another sink.
"""

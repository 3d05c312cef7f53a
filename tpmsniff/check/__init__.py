"""Checks over a frame stream: secrets, required encryption, findings and reports.

Imports only `model` and `codec`: the same checker runs offline, live and in pytest.
"""

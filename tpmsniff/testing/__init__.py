"""Test support for users of tpmsniff: the pytest plugin (`tpmsniff_proxy` fixture)."""

"""Test helpers shared by several integration tests."""

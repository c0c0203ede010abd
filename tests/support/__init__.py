"""Helpers shared by the tests (importable as `support.<module>`: pytest puts tests/ on the path)."""

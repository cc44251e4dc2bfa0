"""The forward path as one pipeline: small steps of one shape, ordered in one place (``build.py``)."""

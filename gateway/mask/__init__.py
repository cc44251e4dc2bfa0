"""Masking: every spelling of every secret found and replaced, in bodies, headers and the gateway's own messages."""

"""The edge steps every endpoint's request passes before its handler: identity, rate limits, cache, CORS."""

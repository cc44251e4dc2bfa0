"""The edge steps of every route: errors, observation, CORS, client auth, limits, cache (ordered in pipeline/build)."""

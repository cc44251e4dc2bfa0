"""Edge steps: what every endpoint runs before its own work (CORS, and the steps the pipeline adds)."""

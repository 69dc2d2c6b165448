"""The benchmark: load generator (engine), run directory, emqtt-bench adapter."""

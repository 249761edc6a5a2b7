"""Model artifacts bound to a feature spec, scoring, training, backtests, the registry."""

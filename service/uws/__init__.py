"""UWS 1.1: asynchronous jobs of every kind (TAP queries, label propagation, training)."""

"""The VAS audit log: one record per call, appended to a Redis stream on the
hot path, shipped by the shipper process into PostgreSQL and MongoDB."""

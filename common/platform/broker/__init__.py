"""The broker: one interface, in process (embedded mode) or on RabbitMQ (deployed)."""

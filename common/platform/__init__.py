"""The platform: adapters to what the services run on.

Broker, blob store, database, HTTP, settings, logs, metrics and the step runner;
it imports only the contracts, and every service is built on it.
"""

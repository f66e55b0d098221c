"""The trigger service: the flow and job API, the schedules, and chained flows; it starts every run."""

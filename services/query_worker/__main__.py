"""`python -m services.query_worker`: run the query_worker service alone (needs ADXFLOW_AMQP_URL)."""

from services.cli import main

main(["serve", "query_worker"])

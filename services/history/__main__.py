"""`python -m services.history`: run the history service alone (needs ADXFLOW_AMQP_URL)."""

from services.cli import main

main(["serve", "history"])

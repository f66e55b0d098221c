"""`python -m services.notifier`: run the notifier service alone (needs ADXFLOW_AMQP_URL)."""

from services.cli import main

main(["serve", "notifier"])

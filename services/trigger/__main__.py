"""`python -m services.trigger`: run the trigger service alone (needs ADXFLOW_AMQP_URL)."""

from services.cli import main

main(["serve", "trigger"])

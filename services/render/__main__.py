"""`python -m services.render`: run the render service alone (needs ADXFLOW_AMQP_URL)."""

from services.cli import main

main(["serve", "render"])

"""`python -m services.history`: run the history service alone (needs ADXFLOW_AMQP_URL)."""

from common.platform.serving import main
from services.history.service import running

main("history", running)

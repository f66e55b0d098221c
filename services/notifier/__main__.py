"""`python -m services.notifier`: run the notifier service alone (needs ADXFLOW_AMQP_URL)."""

from common.platform.serving import main
from services.notifier.service import running

main("notifier", running)

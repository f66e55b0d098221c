"""`python -m services.trigger`: run the trigger service alone (needs ADXFLOW_AMQP_URL)."""

from common.platform.serving import main
from services.trigger.service import running

main("trigger", running)

"""`python -m services.render`: run the render service alone (needs ADXFLOW_AMQP_URL)."""

from common.platform.serving import main
from services.render.service import running

main("render", running)

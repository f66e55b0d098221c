"""`python -m services.query_worker`: run the query_worker service alone (needs ADXFLOW_AMQP_URL)."""

from common.platform.serving import main
from services.query_worker.service import running

main("query_worker", running)

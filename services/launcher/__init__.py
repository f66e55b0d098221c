"""The launcher: the ``adxflow`` command, its API client, ``adxflow up`` and the chart gallery.

The one place that may import several services."""

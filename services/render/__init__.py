"""The render service: a stored result as an HTML table, SVG and PNG charts, and a CSV."""

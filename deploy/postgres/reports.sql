-- The database flows copy results into (databases: reports in deploy/connections.yaml), beside
-- adxflow's own: run once, when the server's data directory is first made.
CREATE DATABASE reports OWNER adxflow;

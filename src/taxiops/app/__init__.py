"""The application on top: `taxiops up` (service), the local Prefect server, the command line."""

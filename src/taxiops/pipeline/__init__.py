"""From a month file to a judged challenger: thin Prefect tasks over `taxiops.ml`, the
values they pass (each with its data fingerprint), the run report, the monthly schedule
and the deployments. The `@flow` entrypoints themselves live in `flows/`."""

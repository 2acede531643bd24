"""Session-wide test settings: what the CLI's entry point would set for a real run."""

from cad.cli.app import quiet_third_party

quiet_third_party()  # before any test imports mlflow: no telemetry leaves the machine

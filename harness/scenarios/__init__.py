"""The core's scenarios: protocols of workloads, each owning its loop, phases and metrics."""

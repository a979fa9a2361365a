"""The scheduler process: `python -m scheduler` sends what is due, on a clock."""

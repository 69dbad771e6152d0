"""The framework's own tests: unit/ (fast, no root) and lab/ (the real local lab)."""

pytest_plugins = ["pytester"]

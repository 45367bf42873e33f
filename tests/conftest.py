"""Shared pytest setup: each group of heavy, session-wide fixtures lives in its own plugin module."""

pytest_plugins = [
    "tests.fixtures_s3",
    "tests.fixtures_clip",
    "tests.fixtures_llm",
    "tests.fixtures_prefect",
    "tests.fixtures_parity",
]

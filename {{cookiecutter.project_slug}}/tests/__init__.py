"""Tests of the service, run against SQLite or the PostgreSQL server in TEST_DATABASE_URL."""

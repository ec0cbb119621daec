"""Storage: tables, engine, migrations and the queue; the only code that speaks SQL."""

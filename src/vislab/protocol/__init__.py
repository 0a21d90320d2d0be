"""The protocol every experiment runs through: statistics, claims, typed results, the runner, the report
skeleton."""

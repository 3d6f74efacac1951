"""The log: schema, migrations, the background writer and the queries. The only code that
writes SQL."""

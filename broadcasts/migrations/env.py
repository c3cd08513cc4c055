"""Alembic environment: the URL comes from the caller (`broadcasts.migrate`), never from a file."""

from alembic import context

from broadcasts.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
with context.begin_transaction():
    context.run_migrations()

"""Search and unread: each membership's last read seq, each message's event seq, and on
PostgreSQL a stored tsvector of each message's text with a GIN index (chat/search.py).

``chat_message.search_vector`` is a *generated* column, ``to_tsvector('simple', text)``,
stored: PostgreSQL computes it on every insert and update of the text, so no code writes
it and a daphne of the release before (a rolling deploy) inserts rows as it always did.
Not a model field: SQLite (a laptop, the tests) has no tsvector and searches with LIKE.
Stored rather than an expression index: a GIN lookup is lossy, and every candidate row is
checked again, and a query that walks a room's newest messages (a common word) tests
each row; with an expression index each of those computes ``to_tsvector`` of the text
again, with the column it is read (bench/search.py measured both).
"""

from django.db import migrations, models

# The column, its index, and the text search configuration (chat/search.py SEARCH_CONFIG).
SEARCH_COLUMN = "search_vector"
SEARCH_INDEX = "message_text_search"
SEARCH_CONFIG = "simple"
# The column's statistics target (PostgreSQL's default is 100; its most is 10,000).
SEARCH_STATISTICS = 1000


def add_search_vector(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"ALTER TABLE chat_message ADD COLUMN {SEARCH_COLUMN} tsvector GENERATED ALWAYS AS "
        f"(to_tsvector('{SEARCH_CONFIG}'::regconfig, COALESCE(text, ''))) STORED"
    )
    schema_editor.execute(
        f"CREATE INDEX {SEARCH_INDEX} ON chat_message USING gin ({SEARCH_COLUMN})"
    )
    # ANALYZE keeps the most common lexemes (ten times the statistics target) and guesses
    # any other word's frequency from the rarest of them. At the default target a word
    # that is rare or nowhere is guessed at a hundred rows, and the planner walks a whole
    # room newest first looking for them (bench/search.py: 322 ms at 100,000 messages for
    # a word that is nowhere); with more lexemes kept it takes the GIN index for those.
    schema_editor.execute(
        f"ALTER TABLE chat_message ALTER COLUMN {SEARCH_COLUMN} SET STATISTICS {SEARCH_STATISTICS}"
    )


def remove_search_vector(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX IF EXISTS {SEARCH_INDEX}")
    schema_editor.execute(f"ALTER TABLE chat_message DROP COLUMN IF EXISTS {SEARCH_COLUMN}")


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0009_edits_deletes_ratings"),
    ]

    operations = [
        migrations.AddField(
            model_name="membership",
            name="last_read_seq",
            field=models.BigIntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name="message",
            name="seq",
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(fields=["room", "seq"], name="message_room_seq"),
        ),
        migrations.RunPython(add_search_vector, remove_search_vector, elidable=False),
    ]

"""Search and unread: each membership's last read seq, each message's event seq, and on
PostgreSQL a GIN index for full-text search (chat/search.py).

The GIN index is an expression index on ``to_tsvector('simple', text)``, made with the
same ``SearchVector`` the search query builds, so the planner matches the two exactly. It
is made only on PostgreSQL: SQLite has no GIN and searches with LIKE (chat/search.py).
Not in ``Message.Meta.indexes`` for the same reason (SQLite would be asked to make it).
"""

from django.db import migrations, models

# The index's name, and the text search configuration (chat/search.py SEARCH_CONFIG).
SEARCH_INDEX = "message_text_search"
SEARCH_CONFIG = "simple"


def _search_index():
    from django.contrib.postgres.indexes import GinIndex
    from django.contrib.postgres.search import SearchVector

    return GinIndex(SearchVector("text", config=SEARCH_CONFIG), name=SEARCH_INDEX)


def add_search_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.add_index(apps.get_model("chat", "Message"), _search_index())


def remove_search_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.remove_index(apps.get_model("chat", "Message"), _search_index())


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0007_default_assistants"),
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
        migrations.RunPython(add_search_index, remove_search_index, elidable=False),
    ]

# A queued execution keeps its request's own max_tokens on the row, so that a requeued one (its
# message lost) runs with it. A nullable column: instant on PostgreSQL, ADD COLUMN on SQLite
# (the table is not rebuilt, its triggers stay).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0012_execution_started"),
    ]

    operations = [
        migrations.AddField(
            model_name="execution",
            name="max_tokens",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
    ]

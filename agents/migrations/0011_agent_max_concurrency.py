# An agent's bulkhead in each serving process (config `max_concurrency:`): at most this many
# synchronous executions in flight; null, no cap. A nullable column: instant on PostgreSQL.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('agents', '0010_agent_queue'),
    ]

    operations = [
        migrations.AddField(
            model_name='agent',
            name='max_concurrency',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddConstraint(
            model_name='agent',
            constraint=models.CheckConstraint(condition=models.Q(('max_concurrency__isnull', True), models.Q(('max_concurrency__gte', 1), ('max_concurrency__lte', 100000)), _connector='OR'), name='agent_max_concurrency_range'),
        ),
    ]

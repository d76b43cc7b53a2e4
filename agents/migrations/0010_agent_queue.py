# An agent's queue (config `queue:`, docs/INTERFACES.md §2): the Celery queue of its queued executions.
# Adding a column with a constant default is instant on PostgreSQL 11+ (no table rewrite).

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('agents', '0009_agent_slo'),
    ]

    operations = [
        migrations.AddField(
            model_name='agent',
            name='queue',
            field=models.CharField(default='default', max_length=64, validators=[django.core.validators.RegexValidator('^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$')]),
        ),
        migrations.AddConstraint(
            model_name='agent',
            constraint=models.CheckConstraint(condition=models.Q(('queue__regex', '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$')), name='agent_queue_name'),
        ),
    ]

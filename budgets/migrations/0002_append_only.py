from __future__ import annotations

from django.db import migrations

from console.db import append_only


class Migration(migrations.Migration):
    dependencies = [("budgets", "0001_initial")]

    operations = [append_only("budgets_spendentry")]

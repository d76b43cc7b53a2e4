from __future__ import annotations

from django.db import migrations

from console.db import append_only


class Migration(migrations.Migration):
    dependencies = [("incidents", "0001_initial")]

    operations = [append_only("incidents_incidentevent")]

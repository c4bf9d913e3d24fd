# Ordered handlers: the blocked delivery status and the index that wakes blocked rows.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_uow", "0006_scheduled_events"),
    ]

    operations = [
        migrations.AlterField(
            model_name="processedevent",
            name="status",
            field=models.CharField(
                choices=[
                    ("published", "published"),
                    ("retrying", "retrying"),
                    ("succeeded", "succeeded"),
                    ("failed", "failed"),
                    ("discarded", "discarded"),
                    ("blocked", "blocked"),
                ],
                default="succeeded",
                max_length=16,
            ),
        ),
        migrations.AddIndex(
            model_name="processedevent",
            index=models.Index(
                condition=models.Q(("status", "blocked")),
                fields=["handler", "aggregate_type", "aggregate_id"],
                name="uow_inbox_blocked_idx",
            ),
        ),
    ]

# How many times each handler delivery was handed to the broker: the deadline sweep backs
# off per delivery, and operators see republished copies.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_uow", "0007_blocked_deliveries"),
    ]

    operations = [
        migrations.AddField(
            model_name="processedevent",
            name="publishes",
            field=models.PositiveIntegerField(default=0),
        ),
    ]

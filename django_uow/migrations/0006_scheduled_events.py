# Scheduled events: the due time a scheduled event was recorded with (NULL for an event
# due at commit). Nullable with no default, so adding it rewrites no row; the claim reads
# it through the existing indexes (pending rows by available_at, owed rows by aggregate).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('django_uow', '0005_discarded'),
    ]

    operations = [
        migrations.AddField(
            model_name='outboxevent',
            name='deliver_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]

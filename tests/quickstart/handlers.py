from django.core.mail import send_mail

from django_uow import event_handler

from .models import OrderPlaced


@event_handler(OrderPlaced)
def send_confirmation(event: OrderPlaced) -> None:
    send_mail(f"Order {event.order_id}", f"Total: {event.total}", None, ["shop@example.com"])

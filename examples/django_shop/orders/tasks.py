from celery import shared_task

from .models import Order


@shared_task
def send_receipt(order_id):
    Order.objects.filter(id=order_id).update(receipt_sent=True)
    return order_id

from django.db import transaction
from django.http import JsonResponse

from .models import Order
from .tasks import send_receipt


def place_order(request, number):
    """The order and its receipt task commit together: no receipt for a rolled-back order,
    no order whose receipt a crash after commit forgot."""
    with transaction.atomic():
        order = Order.objects.create(number=number)
        send_receipt.delay(order.id)  # an INSERT in this transaction
    return JsonResponse({"order": order.id})

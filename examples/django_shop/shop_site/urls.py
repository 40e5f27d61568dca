from django.contrib import admin
from django.urls import path

from orders.views import place_order

urlpatterns = [
    path("admin/", admin.site.urls),
    path("order/<int:number>/", place_order),
]

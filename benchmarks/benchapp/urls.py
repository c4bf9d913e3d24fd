from django.urls import path

from . import views

urlpatterns = [
    path("sync/<int:pk>/", views.credit_sync),
    path("async/<int:pk>/", views.credit_async),
]

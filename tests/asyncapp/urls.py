from django.urls import path

from . import views

urlpatterns = [
    path("isolation/<str:round_>/<int:number>/", views.isolation),
    path("counters/<int:pk>/bump/", views.bump_counter),
    path("cbv/counters/<int:pk>/", views.CounterView.as_view()),
    path("dispatch/counters/<int:pk>/", views.DispatchCounterView.as_view()),
    path("orders/<int:pk>/bump/", views.bump_order),
    path("orders/", views.place_order),
    path("sync/orders/", views.sync_place_order),
    path("slow/<str:text>/", views.slow),
]

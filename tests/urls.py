from django.contrib import admin
from django.urls import include, path

from django_uow.contrib.prometheus import metrics_view
from django_uow.views import health
from tests.testapp import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/outbox/", health),
    path("metrics", metrics_view),
    path("counters/<int:pk>/", views.counter_resource, name="counter"),
    path("strict/counters/<int:pk>/", views.strict_counter_resource, name="strict-counter"),
    path("counters/by-name/<str:name>/", views.counter_by_name, name="counter-by-name"),
    path("counters/<int:pk>/stale/", views.save_stale_copy, name="counter-stale"),
    path("cbv/counters/<int:pk>/", views.CounterView.as_view(), name="cbv-counter"),
    path("orders/<int:pk>/note/", views.note_order, name="note-order"),
    path("cbv/strict/counters/<int:pk>/", views.StrictCounterView.as_view(), name="cbv-strict"),
    path("async/", include("tests.asyncapp.urls")),
]

try:
    from tests.testapp import drf_views
except ImportError:  # djangorestframework is optional
    pass
else:
    urlpatterns += [
        path("drf/counters/<int:pk>/", drf_views.CounterDetail.as_view()),
        path("drf/strict/counters/<int:pk>/", drf_views.StrictCounterDetail.as_view()),
        path("drf/stale/counters/<int:pk>/", drf_views.StaleCounterDetail.as_view()),
    ]
